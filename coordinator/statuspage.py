"""The status page: one server-rendered HTML document of the coordinator's state (read-only).

Nodes (online, last seen, version, fingerprint), jobs and the rounds of the newest ones with
their curves (AUC, loss, epsilon per hospital), the running secure-aggregation session,
encrypted-inference sessions, and refusals and errors from the event log. Everything comes
from the store (the same rows ``status --json`` reads) and every stored text is HTML-escaped:
names and messages were written by agents. The page refreshes itself every 5 seconds and
carries no script.
"""

from __future__ import annotations

import json
import time
from html import escape
from typing import Any

from coordinator.charts import line_chart
from coordinator.statusview import aggregation_label
from medfl import __version__

__all__ = ["render_status"]

#: jobs whose rounds and curves are drawn (newest first); older ones are listed only
CHARTED_JOBS = 5
_PROBLEM_KINDS = ("refused", "retry", "failed", "error", "cancelled")

_CSS = """body{font-family:system-ui,sans-serif;margin:1.2em;color:#222}h1{font-size:1.4em}
h2{font-size:1.15em;margin-top:1.4em;border-bottom:1px solid #ddd}table{border-collapse:collapse;font-size:.9em}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:left}th{background:#f4f4f4}.on{color:#0a0}.off{color:#999}
.bad{color:#b00}code{font-size:.85em}.charts{display:flex;flex-wrap:wrap;gap:10px}"""


def _t(ts: float | None, now: float) -> str:
    if ts is None:
        return "never"
    ago = max(0.0, now - ts)
    rel = f"{ago:.0f} s ago" if ago < 120 else f"{ago / 60:.0f} min ago" if ago < 7200 else f"{ago / 3600:.0f} h ago"
    return f'<span title="{time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))}">{rel}</span>'


def _num(v: float | None, fmt: str = ".4f") -> str:
    return "n/a" if v is None else format(v, fmt)


def _table(headers: list[str], rows: list[list[str]], cls: str) -> str:
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _nodes(store: Any, online: set[str], now: float) -> str:
    rows = []
    for n in store.nodes():
        on = n.status == "approved" and n.name in online
        rows.append([escape(n.name or "(unnamed)"), escape(n.status),
                     '<span class="on">online</span>' if on else '<span class="off">offline</span>',
                     _t(n.last_seen, now), escape(n.version or "?"), f"<code>{escape(n.fingerprint)}</code>",
                     str(n.refusals)])
    if not rows:
        return "<p>No node has connected yet.</p>"
    return _table(["name", "status", "session", "last hello", "version", "fingerprint", "refused handshakes"],
                  rows, "nodes")


def _job_rounds(store: Any, job: Any) -> str:
    rounds = store.rounds(job.id)
    title = f"<h3>{escape(job.name)} <code>{escape(job.id)}</code>: {escape(job.status)}</h3>"
    if not rounds:
        return title + "<p>No round completed yet.</p>"
    rows = [[str(r.round), str(r.agents), escape(", ".join(r.agent_names)), _num(r.val_auc), _num(r.train_loss),
             _num(r.val_loss), _num(r.epsilon, ".3f"), f"{r.seconds:.1f}"] for r in rounds]
    table = _table(["round", "agents", "hospitals", "val AUC", "train loss", "val loss", "epsilon (max)", "seconds"],
                   rows, "rounds")
    eps: dict[str, list[tuple[float, float]]] = {}
    for r in rounds:
        for who, e in r.epsilons.items():
            eps.setdefault(str(who), []).append((r.round, e))
    charts = [line_chart("validation AUC", {"global model": [(r.round, r.val_auc) for r in rounds]}, y_range=(0, 1)),
              line_chart("loss", {"train": [(r.round, r.train_loss) for r in rounds],
                                  "validation": [(r.round, r.val_loss) for r in rounds]})]
    if eps:
        charts.append(line_chart("epsilon per hospital", eps))
    return title + table + '<div class="charts">' + "".join(charts) + "</div>"


def _jobs(store: Any) -> str:
    jobs = store.jobs()
    if not jobs:
        return "<p>No job submitted yet.</p>"
    rows = []
    for j in jobs:
        label = aggregation_label(j.spec)
        rows.append([f"<code>{escape(j.id)}</code>", escape(j.name), escape(j.status),
                     f"{j.rounds_done}/{int(j.spec['job']['rounds'])}", label, escape(j.message)])
    listed = _table(["id", "name", "status", "rounds", "aggregation", "message"], rows, "jobs")
    newest = sorted(jobs, key=lambda j: (j.status != "running", -j.submitted_at))[:CHARTED_JOBS]
    return listed + "".join(_job_rounds(store, j) for j in newest)


def _sessions(store: Any, daemon: dict | None) -> str:
    run = (daemon or {}).get("run")
    secagg = f"<p>Running: <code>{escape(run)}</code></p>" if run else "<p>No job round in progress.</p>"
    waiting = (daemon or {}).get("waiting")
    if waiting:
        secagg += f"<p>{escape(waiting)}</p>"
    sessions = json.loads(store.get_meta("smpc_sessions") or "[]")[-20:]
    rows = [[escape(str(s.get("session", ""))), escape(str(s.get("model", ""))),
             f"<code>{escape(str(s.get('agent', ''))[:23])}</code>", escape(str(s.get("stage", ""))),
             escape(str(s.get("images", ""))), escape(str(s.get("message", "")))] for s in sessions]
    inf = _table(["session", "model", "agent", "stage", "images", "message"], rows, "inference") if rows \
        else "<p>No encrypted-inference session.</p>"
    return "<h2>Secure aggregation</h2>" + secagg + "<h2>Encrypted inference sessions</h2>" + inf


def _problems(store: Any, now: float) -> str:
    marks = ",".join("?" for _ in _PROBLEM_KINDS)
    rows = store.query(f"SELECT * FROM events WHERE kind IN ({marks}) ORDER BY id DESC LIMIT 30", _PROBLEM_KINDS)
    if not rows:
        return "<p>None.</p>"
    return _table(["when", "job", "kind", "detail"],
                  [[_t(r["t"], now), escape(r["job_id"] or ""), f'<span class="bad">{escape(r["kind"])}</span>',
                    escape(r["detail"])] for r in rows], "problems")


def render_status(store: Any, *, coordinator: str, refresh_s: int = 5) -> str:
    """The whole status page as one HTML string.

    Parameters
    ----------
    store : Store
        The coordinator's store (read only).
    coordinator : str
        The coordinator's name (``[coordinator] name``).
    refresh_s : int
        The page reloads itself after this many seconds (0: never).
    """
    now = time.time()
    daemon = json.loads(store.get_meta("daemon") or "null")
    online = set((daemon or {}).get("online") or [])
    state = (daemon or {}).get("state", "never started")
    refresh = f'<meta http-equiv="refresh" content="{int(refresh_s)}">' if refresh_s > 0 else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">{refresh}'
            f"<title>medfl coordinator {escape(coordinator)}</title><style>{_CSS}</style></head><body>"
            f"<h1>medfl coordinator <em>{escape(coordinator)}</em></h1>"
            f"<p>daemon: {escape(state)}; medfl {escape(__version__)}; {len(online)} agent(s) online; "
            f"page rendered {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(now))}</p>"
            f'<h2>Nodes</h2>{_nodes(store, online, now)}<h2>Jobs and rounds</h2>{_jobs(store)}'
            f"{_sessions(store, daemon)}<h2>Refusals and errors</h2>{_problems(store, now)}"
            '<p><a href="/metrics">Prometheus metrics</a> · <a href="/status.json">status as JSON</a></p>'
            "</body></html>")
