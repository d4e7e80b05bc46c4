"""What ``status`` shows, as one dict: the CLI prints it, ``status --json`` dumps it, the web serves it."""

from __future__ import annotations

import json
import time
from typing import Any

__all__ = ["aggregation_label", "status_dict"]


def status_dict(store: Any) -> dict[str, Any]:
    """Everything ``status`` shows, as a dict (``status --json`` prints it).

    Keys: ``daemon`` (pid, state, t, endpoint, online names, run, waiting; null before the first
    start), ``nodes`` (fingerprint, public_key, name, status, first_seen, approved_at, last_seen,
    last_refused, refusals), ``jobs``, ``events`` (the last 10: t, job_id, kind, detail) and
    ``inference_sessions``. Each job has id, name, status, rounds_done, rounds, message,
    aggregation (``secagg``, ``secagg+`` or ``plain``), ``rounds_table`` (one row per completed
    round: round, attempts, agents, agent_names, num_samples, train_loss, val_auc, val_accuracy,
    val_loss, val_samples, seconds, finished_at, checkpoint, epsilon, delta, epsilons per agent,
    val_metrics, client_rho, client_epsilon)
    and, from the last completed round (so far, while the job runs; null before its first round):
    ``final_val_auc`` (the global model's validation AUC), ``final_epsilon`` (the largest epsilon
    any participating hospital has spent on the job; null without DP), ``delta`` (its delta) and
    ``final_client_epsilon`` (the federation's client-level epsilon at ``delta`` over the completed
    rounds; null without client-level DP).
    """
    daemon = json.loads(store.get_meta("daemon") or "null")
    if daemon and daemon.get("state") == "serving" and time.time() - daemon["t"] > 5:
        daemon["state"] = "not responding (stale status; is the daemon running?)"
    jobs = []
    for j in store.jobs():
        rounds = store.rounds(j.id)
        last = rounds[-1] if rounds else None
        jobs.append({"id": j.id, "name": j.name, "status": j.status, "rounds_done": j.rounds_done,
                     "rounds": j.spec["job"]["rounds"], "message": j.message,
                     "aggregation": aggregation_label(j.spec),
                     "final_val_auc": last.val_auc if last else None,
                     "final_epsilon": last.epsilon if last else None,
                     "delta": last.delta if last else None,
                     "final_client_epsilon": last.client_epsilon if last else None,
                     "rounds_table": [r.__dict__ for r in rounds]})
    sessions = json.loads(store.get_meta("smpc_sessions") or "[]")
    return {"daemon": daemon, "nodes": [n.__dict__ for n in store.nodes()], "jobs": jobs,
            "events": store.events(limit=10), "inference_sessions": sessions}


def aggregation_label(spec: dict) -> str:
    """"secagg", "secagg+" or "plain", as the job file says (secure is the default)."""
    agg = spec.get("aggregation") or {}
    if agg.get("secure", True) is False:
        return "plain"
    return "secagg+" if agg.get("neighbours") else "secagg"
