"""The daemon's Prometheus metrics (prometheus-client): live counters plus values read from the store.

Two kinds of series. Live ones are fed by the socket loop as things happen (bytes and
messages in and out, rounds, their duration, dropouts, retries). The rest are read from the
SQLite store at scrape time by a custom collector (agents online, nodes by status, jobs by
status, rounds completed, the queue, inference sessions by stage, the newest AUC and epsilon
of each running job), so ``/metrics`` and ``status`` can never disagree. Every series is
prefixed ``medfl_coordinator_``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["CoordinatorMetrics"]

_P = "medfl_coordinator_"


class _StoreCollector(Collector):
    """Gauges computed from the store (and the daemon's session table) at each scrape."""

    def __init__(self, store: Any, online: Callable[[], int]):
        self.store = store
        self.online = online

    def _counts(self, table: str) -> dict[str, int]:
        rows = self.store.query(f"SELECT status, COUNT(*) AS n FROM {table} GROUP BY status")
        return {r["status"]: int(r["n"]) for r in rows}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Yield the store-backed families."""
        yield GaugeMetricFamily(_P + "agents_online", "Agents with a live session", value=self.online())
        nodes = GaugeMetricFamily(_P + "nodes", "Known nodes by status", labels=["status"])
        jobs = GaugeMetricFamily(_P + "jobs", "Jobs by status", labels=["status"])
        counts = self._counts("nodes")
        for status in ("pending", "approved", "revoked"):
            nodes.add_metric([status], counts.get(status, 0))
        counts = self._counts("jobs")
        for status in ("queued", "running", "done", "failed", "cancelled"):
            jobs.add_metric([status], counts.get(status, 0))
        yield nodes
        yield jobs
        yield GaugeMetricFamily(_P + "queue_length", "Jobs waiting to run", value=counts.get("queued", 0))
        n_rounds = self.store.query("SELECT COUNT(*) AS n FROM rounds")[0]["n"]
        yield GaugeMetricFamily(_P + "rounds_stored", "Completed rounds in the store, all jobs", value=n_rounds)
        auc = GaugeMetricFamily(_P + "job_val_auc", "Validation AUC of the newest round of each running job",
                                labels=["job"])
        eps = GaugeMetricFamily(_P + "job_epsilon", "Largest epsilon spent by a hospital on each running job",
                                labels=["job"])
        for r in self.store.query(
                "SELECT r.job_id, r.val_auc, r.epsilon FROM rounds r JOIN jobs j ON j.id = r.job_id "
                "WHERE j.status = 'running' AND r.round = (SELECT MAX(round) FROM rounds WHERE job_id = r.job_id)"):
            if r["val_auc"] is not None:
                auc.add_metric([r["job_id"]], r["val_auc"])
            if r["epsilon"] is not None:
                eps.add_metric([r["job_id"]], r["epsilon"])
        yield auc
        yield eps
        sessions = GaugeMetricFamily(_P + "inference_sessions", "Encrypted-inference sessions by stage",
                                     labels=["stage"])
        by_stage: dict[str, int] = {}
        for s in json.loads(self.store.get_meta("smpc_sessions") or "[]"):
            by_stage[str(s.get("stage", "?"))] = by_stage.get(str(s.get("stage", "?")), 0) + 1
        for stage, n in sorted(by_stage.items()):
            sessions.add_metric([stage], n)
        yield sessions


class CoordinatorMetrics:
    """The daemon's registry: live series fed by the service, the rest read from ``store`` per scrape.

    Parameters
    ----------
    store : Store
        The coordinator's store (thread-safe; the web thread reads it).
    online : callable
        Returns how many agents have a live session now.
    """

    def __init__(self, store: Any, online: Callable[[], int]):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.bytes_in = Counter(_P + "received_bytes", "Bytes received from agents", registry=r)
        self.bytes_out = Counter(_P + "sent_bytes", "Bytes sent to agents", registry=r)
        self.messages_in = Counter(_P + "received_messages", "Messages received, by type", ["type"], registry=r)
        self.messages_out = Counter(_P + "sent_messages", "Messages sent, by type", ["type"], registry=r)
        self.rounds = Counter(_P + "rounds", "Rounds completed by this daemon", registry=r)
        self.round_seconds = Histogram(_P + "round_duration_seconds", "Wall time of a completed round",
                                       buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800), registry=r)
        self.dropouts = Counter(_P + "dropouts", "Agents that went offline or refused during a round", registry=r)
        self.retries = Counter(_P + "round_retries", "Rounds retried (too few updates by the deadline)", registry=r)
        self.errors = Counter(_P + "protocol_errors", "Messages answered with an ERROR, by code", ["code"],
                              registry=r)
        r.register(_StoreCollector(store, online))

    def exposition(self) -> bytes:
        """The text exposition format of every series (what ``GET /metrics`` returns)."""
        return generate_latest(self.registry)
