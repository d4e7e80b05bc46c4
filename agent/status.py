"""``medfl-agent status``: what the hospital's agent is doing, read from files, without touching the daemon.

The daemon writes ``state_dir/agent-status.json`` (atomically, at most once a second and at every
change of connection or job): its pid, whether it is connected and welcomed, the coordinator's
name, version and the clock difference measured from its WELCOME, and the job and round in
progress. ``status`` reads that file (a file older than :data:`STALE_S` or whose pid is gone
means the daemon is not running), and adds what is on disk: the key fingerprint, the policy,
the privacy budget spent (the ledger), the PACS queues, the newest models, disk use and the
installed version.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import time
from typing import Any

from medfl import __version__

__all__ = ["STALE_S", "StatusFile", "agent_status", "format_status", "status_path"]

#: a status file older than this means the daemon stopped (it rewrites it every few seconds)
STALE_S = 15.0
#: the daemon rewrites an unchanged status this often
REFRESH_S = 5.0


def status_path(state_dir: pathlib.Path) -> pathlib.Path:
    """Where the daemon's status file lives."""
    return state_dir / "agent-status.json"


class StatusFile:
    """The daemon's side: :meth:`update` rewrites the file when something changed or every :data:`REFRESH_S`."""

    def __init__(self, state_dir: pathlib.Path):
        self.path = status_path(state_dir)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._last: dict[str, Any] = {}
        self._written = 0.0

    def update(self, **facts: Any) -> None:
        """Merge ``facts`` into the status and write it if it changed or is due."""
        now = time.monotonic()
        merged = {**self._last, **facts}
        if merged == self._last and now - self._written < REFRESH_S:
            return
        self._last = merged
        self._written = now
        doc = {**merged, "pid": os.getpid(), "t": time.time(), "version": __version__}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, self.path)
        except OSError:  # a full disk must not stop the daemon; doctor reports the disk
            pass


def _daemon(state_dir: pathlib.Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(status_path(state_dir).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or time.time() - float(doc.get("t", 0)) > STALE_S:
        return None
    try:
        os.kill(int(doc.get("pid", -1)), 0)
    except (OSError, ValueError):
        return None
    return doc


def _size(path: pathlib.Path) -> int:
    if not path.exists():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _count(folder: pathlib.Path) -> int:
    return len(list(folder.glob("*.dcm"))) if folder.is_dir() else 0


def agent_status(cfg: Any, config_path: pathlib.Path) -> dict[str, Any]:
    """Everything ``medfl-agent status`` shows, as a dict (``--json`` prints it as is)."""
    from medfl.privacy.ledger import Ledger, dataset_key
    from medfl.wire import fingerprint, read_keypair

    state = cfg.agent.state_dir
    out: dict[str, Any] = {"name": cfg.agent.name, "version": __version__, "config": str(config_path),
                           "coordinator_endpoint": cfg.coordinator.endpoint}
    try:
        out["fingerprint"] = fingerprint(read_keypair(cfg.keys.secret_key_file).public) \
            if cfg.keys.secret_key_file else None
    except Exception as exc:  # noqa: BLE001 - status shows the problem, doctor explains it
        out["fingerprint"] = f"unreadable key: {exc}"
    out["daemon"] = _daemon(state)
    pol = cfg.policy
    out["policy"] = {"allowed_models": list(pol.allowed_models), "min_parties": pol.min_parties,
                     "require_secure_aggregation": pol.require_secure_aggregation,
                     "max_epsilon_per_job": pol.max_epsilon_per_job, "max_total_epsilon": pol.max_total_epsilon}
    ledger_file = state / "privacy" / "ledger.sqlite"
    spent = 0.0
    if ledger_file.exists():
        ledger = Ledger(ledger_file)
        try:
            spent = ledger.dataset_epsilon(dataset=dataset_key(cfg.data.kind, cfg.data.path), delta=pol.total_delta)
        finally:
            ledger.close()
    out["privacy"] = {"epsilon_spent": spent, "delta": pol.total_delta, "max_total_epsilon": pol.max_total_epsilon}
    pacs = state / "pacs"
    out["pacs"] = {"enabled": cfg.pacs.enabled,
                   "inbox": _count(pacs / "inbox" / "new") + _count(pacs / "inbox" / "work"),
                   "outbox": _count(pacs / "outbox" / "new") + _count(pacs / "outbox" / "work"),
                   "quarantined": len(list((pacs / "quarantine").glob("*.reason.json")))
                   if (pacs / "quarantine").is_dir() else 0}
    models = sorted((state / "models").glob("*/round-*.safetensors"), key=lambda p: p.stat().st_mtime)
    out["last_models"] = [{"job": p.parent.name, "round": int(p.stem.split("-")[1]), "t": p.stat().st_mtime}
                          for p in models[-3:]]
    usage = shutil.disk_usage(state if state.exists() else state.parent)
    out["disk"] = {"state_bytes": _size(state), "free_bytes": usage.free, "total_bytes": usage.total}
    return out


def _ago(t: float) -> str:
    dt = max(0.0, time.time() - t)
    return f"{dt:.0f} s ago" if dt < 120 else f"{dt / 60:.0f} min ago" if dt < 7200 else f"{dt / 3600:.1f} h ago"


def format_status(s: dict[str, Any]) -> list[str]:
    """The lines ``medfl-agent status`` prints."""
    from medfl.safetext import escape

    d = s["daemon"]
    lines = [f"agent {escape(s['name'], limit=64)!r}, medfl {s['version']}, key {s['fingerprint']}"]
    if d is None:
        lines.append(f"daemon: not running (start it with 'medfl-agent serve --config {s['config']}')")
    else:
        coord = escape(d.get("coordinator") or "?", limit=64)
        state = ("connected and welcomed" if d.get("welcomed") else
                 "connected, waiting for the coordinator's welcome" if d.get("connected") else
                 "not connected (retrying)")
        lines.append(f"daemon: running (pid {d['pid']}), {state} to {coord} at {s['coordinator_endpoint']}"
                     + (f", coordinator medfl {escape(d['coordinator_version'], limit=32)}"
                        if d.get("coordinator_version") else ""))
        if d.get("clock_skew_s") is not None:
            lines.append(f"clock: {d['clock_skew_s']:+.1f} s against the coordinator")
        if d.get("job"):
            lines.append(f"job: {escape(d['job'], limit=64)}, round {d.get('round')}, {escape(d.get('work', ''))}")
    p = s["policy"]
    lines.append(f"policy: models {', '.join(p['allowed_models'])}; at least {p['min_parties']} hospitals; secure "
                 f"aggregation {'required' if p['require_secure_aggregation'] else 'optional'}")
    pv = s["privacy"]
    cap = f" of {pv['max_total_epsilon']:g}" if pv["max_total_epsilon"] else " (no limit set)"
    lines.append(f"privacy: epsilon {pv['epsilon_spent']:.3f}{cap} spent on this data set, at delta {pv['delta']:g}")
    q = s["pacs"]
    lines.append(f"pacs: {'enabled' if q['enabled'] else 'off'}; {q['inbox']} image(s) waiting, {q['outbox']} "
                 f"report(s) to send, {q['quarantined']} quarantined")
    if s["last_models"]:
        newest = s["last_models"][-1]
        lines.append(f"last model: job {newest['job']} round {newest['round']}, {_ago(newest['t'])}")
    else:
        lines.append("last model: none yet")
    disk = s["disk"]
    lines.append(f"disk: state {disk['state_bytes'] / 2**20:.1f} MiB; {disk['free_bytes'] / 2**30:.1f} GiB free of "
                 f"{disk['total_bytes'] / 2**30:.1f} GiB")
    return lines
