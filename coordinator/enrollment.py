"""Enrollment from the operator's side: ``nodes approve`` by fingerprint or key file, and ``nodes list``.

A fingerprint is checked for its form only (:func:`medfl.wire.check_fingerprint`) and never
matched against the known ones: a refusal names no other fingerprint, so a typo cannot print
the right one to copy, and the operator's check against the hospital's reading stays a check.
After an approval the operator is told when the agent will be admitted, from the agent's
back-off cap after a refused handshake (:data:`medfl.wire.messages.REFUSED_RETRY_MAX_S`).
"""

from __future__ import annotations

import json
import math
import pathlib
import time

from coordinator.store import NodeRow, Store
from medfl.errors import NotFound
from medfl.safetext import escape
from medfl.wire import check_fingerprint, fingerprint, read_public_key
from medfl.wire.messages import REFUSED_RETRY_MAX_S

__all__ = ["approve", "ago", "node_table"]

#: the name column of an agent that has not said HELLO yet (the operator gave no --name)
NOT_CONNECTED = "(not connected yet)"
#: the name column of an agent refused so far (its HELLO cannot arrive before approval)
PENDING = "(pending: not approved)"


def ago(t: float | None, now: float | None = None) -> str:
    """``"12 s ago"``, ``"5 min ago"``, ``"3 h ago"`` or a date; ``"never"`` for None."""
    if t is None:
        return "never"
    dt = max(0.0, (time.time() if now is None else now) - t)
    if dt < 120:
        return f"{dt:.0f} s ago"
    if dt < 7200:
        return f"{dt / 60:.0f} min ago"
    if dt < 172800:
        return f"{dt / 3600:.0f} h ago"
    return time.strftime("on %Y-%m-%d %H:%M", time.localtime(t))


def _online(store: Store) -> set[str] | None:
    """Names of the agents connected now, or None when no daemon reports (stopped, or stale)."""
    daemon = json.loads(store.get_meta("daemon") or "null")
    if not daemon or daemon.get("state") != "serving" or time.time() - daemon.get("t", 0) > 5:
        return None
    return set(daemon.get("online") or [])


def _contact(n: NodeRow, online: set[str] | None) -> str:
    if n.status == "approved":
        if online is not None and n.name and n.name in online:
            return "online now"
        if n.last_seen is None:
            return "never connected"
        return f"last seen {ago(n.last_seen)}"
    if n.last_refused is None:
        return "never tried"
    times = f"{n.refusals} time{'s' if n.refusals != 1 else ''}"
    return f"refused {times}, last {ago(n.last_refused)}"


def node_table(store: Store) -> list[str]:
    """The lines of ``nodes list``: state, name (or a placeholder), fingerprint, last contact."""
    rows = store.nodes()
    if not rows:
        return ["no agents yet: approve one with 'medfl-coordinator nodes approve agent.key' (its public key "
                "file), or start the agent and approve the fingerprint it shows"]
    online = _online(store)
    lines = [f"{'STATE':9s} {'NAME':24s} {'VERSION':9s} {'FINGERPRINT':50s} LAST CONTACT"]
    for n in rows:
        placeholder = {"approved": NOT_CONNECTED, "pending": PENDING}.get(n.status, f"({n.status})")
        name = escape(n.name, limit=64) or placeholder
        version = escape(n.version, limit=32) or "-"
        lines.append(f"{n.status:9s} {name:24s} {version:9s} {n.fingerprint:50s} {_contact(n, online)}")
    if any(n.status == "pending" for n in rows):
        lines.append("to admit a pending agent, read its fingerprint with its hospital ('medfl-agent fingerprint' "
                     "there) and compare before 'medfl-coordinator nodes approve SHA256:...'")
    if online is None:
        lines.append("the daemon is not running (or not responding): nobody is online until "
                     "'medfl-coordinator serve' runs")
    lines.append(f"a refused agent retries at most every {REFUSED_RETRY_MAX_S:.0f} s; an approved one is admitted "
                 "on its next try")
    return lines


def _is_key(who: str) -> bool:
    """Whether ``who`` names a key (a file, a path-like name or 40 Z85 characters), not a fingerprint."""
    if who.startswith("SHA256:"):
        return False
    return pathlib.Path(who).exists() or len(who) == 40 or "/" in who or who.endswith((".key", ".key_secret"))


def approve(store: Store, who: str, *, name: str = "") -> list[str]:
    """Approve an agent by fingerprint, key file or Z85 key; returns what to tell the operator.

    Parameters
    ----------
    store : Store
        The coordinator's store.
    who : str
        ``SHA256:...`` (read from the hospital), a ``.key`` file, or a Z85 public key.
    name : str
        The operator's name for the agent ("" keeps the name the agent gives in HELLO).

    Raises
    ------
    AuthError
        A malformed fingerprint, an unknown one (no other fingerprint is named), or a bad key.
    """
    if _is_key(who):
        key = read_public_key(who)
        fp, public = fingerprint(key), key.decode("ascii")
    else:
        fp, public = check_fingerprint(who), None
    try:
        before: NodeRow | None = store.node(fp)
    except NotFound:
        before = None
    row = store.approve_node(fp, public, name=name)
    shown = row.name or "(its name comes with its first HELLO)"
    lines = [f"approved {row.fingerprint} {shown}"]
    if before is not None and before.status == "approved":
        lines[0] += " (it was already approved)"
    lines.append(_when(store, before))
    return lines


def _when(store: Store, before: NodeRow | None) -> str:
    """When the just-approved agent will be admitted, from its back-off after a refused handshake."""
    cap = REFUSED_RETRY_MAX_S
    if _online(store) is None:
        return ("the coordinator daemon is not running (or not responding): the agent is admitted once "
                "'medfl-coordinator serve' runs and the agent's next try arrives")
    last = before.last_refused if before is not None and before.status != "approved" else None
    if last is None:
        return (f"it is admitted on its first connection; an agent that was refused retries at most every "
                f"{cap:.0f} s, so a running one connects within {cap:.0f} s")
    since = time.time() - last
    if since > cap + 2:
        return (f"it was last refused {ago(last)}, longer than its longest back-off ({cap:.0f} s): it is probably "
                "not running; start it ('medfl-agent serve' at the hospital) and it connects at once")
    wait = max(1, math.ceil(cap - since) + 1)
    return (f"it was last refused {ago(last)}; the agent retries at most every {cap:.0f} s, so it will connect "
            f"within about {wait} s ('medfl-coordinator nodes list' shows it online then)")
