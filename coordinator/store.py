"""The coordinator's persistent state in SQLite: nodes, jobs and rounds.

The daemon and the operator's CLI (``nodes approve``, ``jobs submit``, ``status``) open the
same database file; SQLite's WAL mode lets the CLI write while the daemon runs, and the daemon
picks changes up by polling. ``Store(":memory:")`` is the in-memory twin used by unit tests.

Compatibility: columns are only ever added (with defaults); ``SCHEMA_VERSION`` counts changes.
"""

from __future__ import annotations

import json
import pathlib
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from medfl.durable_db import open_durable
from medfl.errors import AuthError, NotFound, StateError

__all__ = ["InvitationRow", "JobRow", "NodeRow", "RoundRow", "Store"]

SCHEMA_VERSION = 5  # 4: index nodes_by_public_key (the ZAP lookup no longer scans the table); 5: invitations,
# nodes.version (rounds.val_metrics, added later, is one of _ADDED_COLUMNS: no version bump needed)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    fingerprint TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'revoked')),
    first_seen REAL NOT NULL,
    approved_at REAL,
    last_seen REAL,
    last_refused REAL,
    refusals INTEGER NOT NULL DEFAULT 0,
    version TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS nodes_by_public_key ON nodes(public_key);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    submitted_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    rounds_done INTEGER NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS rounds (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    round INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1,
    agents INTEGER NOT NULL,
    agent_names TEXT NOT NULL,
    num_samples INTEGER NOT NULL,
    train_loss REAL,
    val_auc REAL,
    val_accuracy REAL,
    val_loss REAL,
    val_samples INTEGER,
    seconds REAL NOT NULL,
    finished_at REAL NOT NULL,
    checkpoint TEXT NOT NULL,
    epsilon REAL,
    delta REAL,
    epsilons TEXT NOT NULL DEFAULT '{}',
    val_metrics TEXT NOT NULL DEFAULT '{}',
    client_rho REAL,
    client_epsilon REAL,
    PRIMARY KEY (job_id, round)
);
CREATE TABLE IF NOT EXISTS invitations (
    id TEXT PRIMARY KEY,
    public_key TEXT NOT NULL UNIQUE,
    fingerprint TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    fields_json TEXT NOT NULL,
    used_at REAL,
    used_by TEXT
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    t REAL NOT NULL,
    job_id TEXT,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL
);
"""
#: columns added after version 1: (table, column, declaration), applied to older databases
_ADDED_COLUMNS = [("rounds", "epsilon", "REAL"), ("rounds", "delta", "REAL"),
                  ("rounds", "epsilons", "TEXT NOT NULL DEFAULT '{}'"),
                  ("nodes", "last_refused", "REAL"), ("nodes", "refusals", "INTEGER NOT NULL DEFAULT 0"),
                  ("nodes", "version", "TEXT NOT NULL DEFAULT ''"),
                  ("rounds", "val_metrics", "TEXT NOT NULL DEFAULT '{}'"),
                  ("rounds", "client_rho", "REAL"), ("rounds", "client_epsilon", "REAL")]


@dataclass(frozen=True)
class NodeRow:
    """An agent known to the coordinator.

    ``last_seen`` is its last handshake or HELLO; ``last_refused`` and ``refusals`` count the
    handshakes refused while it was not approved (pending or revoked).
    """

    fingerprint: str
    public_key: str
    name: str
    status: str
    first_seen: float
    approved_at: float | None
    last_seen: float | None
    last_refused: float | None = None
    refusals: int = 0
    #: the software version of its last HELLO ("" before one)
    version: str = ""


@dataclass(frozen=True)
class InvitationRow:
    """An invitation issued by ``nodes invite``: its key, the hospital's name, expiry, and who used it.

    ``fields`` are the signed fields exactly as written into the file (the record the coordinator
    trusts; the file is compared against it).
    """

    id: str
    public_key: str
    fingerprint: str
    name: str
    created: float
    expires: float
    fields: dict[str, Any]
    used_at: float | None
    used_by: str | None


@dataclass(frozen=True)
class JobRow:
    """A submitted job and where it stands."""

    id: str
    name: str
    spec: dict[str, Any]
    status: str
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    rounds_done: int
    message: str


@dataclass(frozen=True)
class RoundRow:
    """A completed round: who took part, the metrics of the new global model, its checkpoint."""

    job_id: str
    round: int
    attempts: int
    agents: int
    agent_names: tuple[str, ...]
    num_samples: int
    train_loss: float | None
    val_auc: float | None
    val_accuracy: float | None
    val_loss: float | None
    val_samples: int | None
    seconds: float
    finished_at: float
    checkpoint: str
    #: differential privacy of the round (None when the job runs without DP): the largest epsilon
    #: any participating agent reported for the job so far, at ``delta``; per agent in ``epsilons``
    epsilon: float | None = None
    delta: float | None = None
    epsilons: dict[str, float] = field(default_factory=dict)
    #: the task's other validation metrics, e.g. a segmentation job's ``dice`` (mean over the
    #: foreground classes), ``dice_1`` .. ``dice_{K-1}`` and ``hd95`` (None where not measured)
    val_metrics: dict[str, float | None] = field(default_factory=dict)
    #: client-level DP (None without it): the round's zCDP, from its survivors' noise, and the
    #: job's client-level epsilon at ``delta`` after it (every completed round composed)
    client_rho: float | None = None
    client_epsilon: float | None = None


class Store:
    """SQLite-backed state, safe to share between the daemon's threads.

    Parameters
    ----------
    path : str or Path
        Database file, or ``":memory:"`` for the in-memory twin.
    """

    def __init__(self, path: str | pathlib.Path):
        self.path = str(path)
        self._lock = threading.RLock()
        try:
            self._db = open_durable(self.path, _SCHEMA, schema_version=SCHEMA_VERSION, added_columns=_ADDED_COLUMNS,
                                    rows=True)
        except sqlite3.DatabaseError as exc:
            raise StateError(f"cannot open coordinator database {self.path}: {exc}; move the file aside "
                             "or point state_dir at a fresh folder") from exc
        with self._lock:  # an older file was migrated above (tables, index, columns): record it
            self._db.execute("UPDATE meta SET value=? WHERE key='schema_version' AND CAST(value AS INTEGER) < ?",
                             (str(SCHEMA_VERSION), SCHEMA_VERSION))

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # ---- nodes -------------------------------------------------------------------------
    def see_node(self, fingerprint: str, public_key: str) -> NodeRow:
        """Record a handshake from ``public_key``: new keys become 'pending'; unapproved ones count a refusal."""
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO nodes (fingerprint, public_key, status, first_seen, last_seen, last_refused, refusals) "
                "VALUES (?, ?, 'pending', ?, ?, ?, 1) ON CONFLICT(fingerprint) DO UPDATE SET "
                "last_seen=excluded.last_seen, "
                "last_refused=CASE WHEN nodes.status='approved' THEN nodes.last_refused ELSE excluded.last_seen END, "
                "refusals=nodes.refusals + (nodes.status != 'approved')",
                (fingerprint, public_key, now, now, now),
            )
        return self.node(fingerprint)

    def approve_node(self, fingerprint: str, public_key: str | None = None, *, name: str = "") -> NodeRow:
        """Approve a node by fingerprint (it must have tried to connect) or by its public key."""
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT * FROM nodes WHERE fingerprint=?", (fingerprint,)).fetchone()
            if row is None and public_key is None:
                # never list the other fingerprints here: a typo would print the right one to copy,
                # and the check against the hospital's reading would be lost
                raise AuthError(
                    f"no agent with fingerprint {fingerprint} has tried to connect; read the fingerprint again "
                    "from the hospital ('medfl-agent fingerprint' on their machine, checked with them by phone), "
                    "never copy it from this machine; 'medfl-coordinator nodes list' shows the agents that tried. "
                    "Or approve it by its public key file (medfl-coordinator nodes approve agent.key), or start "
                    "the agent first")
            if row is None:
                db.execute("INSERT INTO nodes (fingerprint, public_key, name, status, first_seen, approved_at) "
                           "VALUES (?, ?, ?, 'approved', ?, ?)", (fingerprint, public_key, name, now, now))
            else:
                db.execute("UPDATE nodes SET status='approved', approved_at=?, name=CASE WHEN ?='' THEN name "
                           "ELSE ? END WHERE fingerprint=?", (now, name, name, fingerprint))
        return self.node(fingerprint)

    def revoke_node(self, fingerprint: str) -> NodeRow:
        """Revoke a node: its next handshake is refused."""
        with self._tx() as db:
            cur = db.execute("UPDATE nodes SET status='revoked' WHERE fingerprint=?", (fingerprint,))
            if cur.rowcount == 0:
                raise NotFound(f"no node with fingerprint {fingerprint}; see 'medfl-coordinator nodes list'")
        return self.node(fingerprint)

    def set_node_name(self, fingerprint: str, name: str, *, version: str = "") -> None:
        """Record an approved agent's HELLO: it was seen now, its version, and its name if the operator gave none."""
        with self._tx() as db:
            db.execute("UPDATE nodes SET last_seen=?, name=CASE WHEN name='' THEN ? ELSE name END, "
                       "version=CASE WHEN ?='' THEN version ELSE ? END WHERE fingerprint=?",
                       (time.time(), name, version, version, fingerprint))

    def is_approved(self, public_key: str) -> bool:
        """True if the key belongs to an approved node."""
        rows = self._query("SELECT status FROM nodes WHERE public_key=?", (public_key,))
        return bool(rows) and rows[0]["status"] == "approved"

    def node_status(self, public_key: str) -> str | None:
        """The status of the node with this key ('pending', 'approved', 'revoked'), or None if unknown."""
        rows = self._query("SELECT status FROM nodes WHERE public_key=?", (public_key,))
        return str(rows[0]["status"]) if rows else None

    def count_nodes(self, status: str) -> int:
        """How many nodes have this status."""
        return int(self._query("SELECT COUNT(*) AS n FROM nodes WHERE status=?", (status,))[0]["n"])

    def forget_node(self, fingerprint: str) -> NodeRow:
        """Delete a pending or revoked node's row (an approved one must be revoked first)."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM nodes WHERE fingerprint=?", (fingerprint,)).fetchone()
            if row is None:
                raise NotFound(f"no node with fingerprint {fingerprint}; see 'medfl-coordinator nodes list'")
            if row["status"] == "approved":
                raise StateError(f"{fingerprint} is approved; revoke it first ('medfl-coordinator nodes revoke "
                                 f"{fingerprint}'), then forget it")
            db.execute("DELETE FROM nodes WHERE fingerprint=?", (fingerprint,))
        return NodeRow(**dict(row))

    def prune_nodes(self, *, status: str = "pending", older_than_s: float = 0.0) -> int:
        """Delete nodes with ``status`` not seen for ``older_than_s`` seconds; returns how many."""
        if status not in ("pending", "revoked"):
            raise StateError(f"only pending or revoked nodes can be pruned, not {status!r}")
        cutoff = time.time() - older_than_s
        with self._tx() as db:
            cur = db.execute("DELETE FROM nodes WHERE status=? AND COALESCE(last_seen, first_seen) <= ?",
                             (status, cutoff))
            return int(cur.rowcount)

    def node(self, fingerprint: str) -> NodeRow:
        """One node by fingerprint."""
        rows = self._query("SELECT * FROM nodes WHERE fingerprint=?", (fingerprint,))
        if not rows:
            raise NotFound(f"no node with fingerprint {fingerprint}")
        return NodeRow(**dict(rows[0]))

    def nodes(self) -> list[NodeRow]:
        """Every known node."""
        return [NodeRow(**dict(r)) for r in self._query("SELECT * FROM nodes ORDER BY first_seen")]

    # ---- invitations -------------------------------------------------------------------
    def add_invitation(self, row: InvitationRow) -> None:
        """Record an issued invitation."""
        with self._tx() as db:
            db.execute("INSERT INTO invitations (id, public_key, fingerprint, name, created, expires, fields_json) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)", (row.id, row.public_key, row.fingerprint, row.name,
                                                        row.created, row.expires, json.dumps(row.fields)))

    @staticmethod
    def _invitation_row(r: sqlite3.Row) -> InvitationRow:
        d = dict(r)
        d["fields"] = json.loads(d.pop("fields_json"))
        return InvitationRow(**d)

    def invitation(self, fingerprint: str) -> InvitationRow | None:
        """The invitation whose key has this fingerprint, or None."""
        rows = self._query("SELECT * FROM invitations WHERE fingerprint=?", (fingerprint,))
        return self._invitation_row(rows[0]) if rows else None

    def is_invitation_key(self, public_key: str) -> bool:
        """True if the key is an invitation key (any state: a used or expired one is told so, not silently cut)."""
        return bool(self._query("SELECT 1 FROM invitations WHERE public_key=?", (public_key,)))

    def invitations(self) -> list[InvitationRow]:
        """Every invitation, oldest first."""
        return [self._invitation_row(r) for r in self._query("SELECT * FROM invitations ORDER BY created")]

    def redeem_invitation(self, invitation_id: str, fingerprint: str, public_key: str, name: str) -> NodeRow:
        """Mark the invitation used by ``fingerprint`` and approve that key, in one transaction.

        Raises
        ------
        StateError
            The invitation was used meanwhile by another key, or the key is revoked.
        """
        now = time.time()
        with self._tx() as db:
            cur = db.execute("UPDATE invitations SET used_at=?, used_by=? WHERE id=? AND used_at IS NULL",
                             (now, fingerprint, invitation_id))
            if cur.rowcount != 1:
                raise StateError(f"invitation {invitation_id} was used meanwhile")
            row = db.execute("SELECT status FROM nodes WHERE fingerprint=?", (fingerprint,)).fetchone()
            if row is not None and row["status"] == "revoked":
                raise StateError(f"key {fingerprint} was revoked; an invitation does not undo a revocation")
            if row is None:
                db.execute("INSERT INTO nodes (fingerprint, public_key, name, status, first_seen, approved_at) "
                           "VALUES (?, ?, ?, 'approved', ?, ?)", (fingerprint, public_key, name, now, now))
            else:
                db.execute("UPDATE nodes SET status='approved', approved_at=?, name=? WHERE fingerprint=?",
                           (now, name, fingerprint))
            self._event(db, None, "enrolled", f"{name} ({fingerprint}) by invitation {invitation_id}")
        return self.node(fingerprint)

    def prune_invitations(self, *, older_than_s: float = 0.0) -> int:
        """Delete invitations used or expired more than ``older_than_s`` seconds ago; returns how many."""
        cutoff = time.time() - older_than_s
        with self._tx() as db:
            cur = db.execute("DELETE FROM invitations WHERE COALESCE(used_at, expires) <= ?", (cutoff,))
            return int(cur.rowcount)

    # ---- jobs --------------------------------------------------------------------------
    def submit_job(self, spec: dict[str, Any]) -> JobRow:
        """Queue a job; returns its row with a fresh id."""
        job_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        with self._tx() as db:
            db.execute("INSERT INTO jobs (id, name, spec_json, status, submitted_at) VALUES (?, ?, ?, 'queued', ?)",
                       (job_id, spec["job"]["name"], json.dumps(spec, sort_keys=True), time.time()))
            self._event(db, job_id, "submitted", spec["job"]["name"])
        return self.job(job_id)

    def job(self, job_id: str) -> JobRow:
        """One job by id."""
        rows = self._query("SELECT * FROM jobs WHERE id=?", (job_id,))
        if not rows:
            raise NotFound(f"no job {job_id!r}; see 'medfl-coordinator jobs list'")
        return self._job_row(rows[0])

    @staticmethod
    def _job_row(r: sqlite3.Row) -> JobRow:
        d = dict(r)
        d["spec"] = json.loads(d.pop("spec_json"))
        return JobRow(**d)

    def jobs(self, *, status: str | None = None) -> list[JobRow]:
        """Jobs in submission order, optionally only those with ``status``."""
        if status:
            rows = self._query("SELECT * FROM jobs WHERE status=? ORDER BY submitted_at", (status,))
        else:
            rows = self._query("SELECT * FROM jobs ORDER BY submitted_at")
        return [self._job_row(r) for r in rows]

    def set_job_status(self, job_id: str, status: str, message: str = "") -> None:
        """Move a job to ``status`` (running, done, failed, cancelled)."""
        now = time.time()
        with self._tx() as db:
            if status == "running":
                db.execute("UPDATE jobs SET status=?, message=?, started_at=COALESCE(started_at, ?) WHERE id=?",
                           (status, message, now, job_id))
            else:
                db.execute("UPDATE jobs SET status=?, message=?, finished_at=? WHERE id=?",
                           (status, message, now, job_id))
            self._event(db, job_id, status, message)

    def cancel_job(self, job_id: str) -> JobRow:
        """Cancel a queued or running job."""
        job = self.job(job_id)
        if job.status not in ("queued", "running"):
            raise StateError(f"job {job_id} is {job.status}; only queued or running jobs can be cancelled")
        self.set_job_status(job_id, "cancelled", "cancelled by the operator")
        return self.job(job_id)

    # ---- rounds ------------------------------------------------------------------------
    def record_round(self, row: RoundRow) -> None:
        """Persist a completed round and advance the job's ``rounds_done`` in one transaction."""
        d = row.__dict__.copy()
        d["agent_names"] = json.dumps(list(row.agent_names))
        d["epsilons"] = json.dumps(row.epsilons, sort_keys=True)
        d["val_metrics"] = json.dumps(row.val_metrics, sort_keys=True)
        cols = ", ".join(d)
        marks = ", ".join("?" for _ in d)
        with self._tx() as db:
            db.execute(f"INSERT OR REPLACE INTO rounds ({cols}) VALUES ({marks})", tuple(d.values()))
            db.execute("UPDATE jobs SET rounds_done=? WHERE id=?", (row.round, row.job_id))
            self._event(db, row.job_id, "round", f"round {row.round} done with {row.agents} agents")

    def rounds(self, job_id: str) -> list[RoundRow]:
        """Completed rounds of a job, in order."""
        out = []
        for r in self._query("SELECT * FROM rounds WHERE job_id=? ORDER BY round", (job_id,)):
            d = dict(r)
            d["agent_names"] = tuple(json.loads(d["agent_names"]))
            d["epsilons"] = json.loads(d["epsilons"] or "{}")
            d["val_metrics"] = json.loads(d["val_metrics"] or "{}")
            out.append(RoundRow(**d))
        return out

    # ---- events ------------------------------------------------------------------------
    @staticmethod
    def _event(db: sqlite3.Connection, job_id: str | None, kind: str, detail: str) -> None:
        db.execute("INSERT INTO events (t, job_id, kind, detail) VALUES (?, ?, ?, ?)",
                   (time.time(), job_id, kind, detail))

    def event(self, job_id: str | None, kind: str, detail: str) -> None:
        """Append a line to the event log (shown by ``status``)."""
        with self._tx() as db:
            self._event(db, job_id, kind, detail)

    def events(self, job_id: str | None = None, *, limit: int = 20) -> list[dict[str, Any]]:
        """The latest events, newest last."""
        if job_id:
            rows = self._query("SELECT * FROM events WHERE job_id=? ORDER BY id DESC LIMIT ?", (job_id, limit))
        else:
            rows = self._query("SELECT * FROM events ORDER BY id DESC LIMIT ?", (limit,))
        return [dict(r) for r in reversed(rows)]

    def last_event_id(self) -> int:
        """The id of the newest event (0 when there is none)."""
        return int(self._query("SELECT COALESCE(MAX(id), 0) AS n FROM events")[0]["n"])

    def events_after(self, event_id: int, *, limit: int = 1000) -> list[dict[str, Any]]:
        """Events with an id above ``event_id``, oldest first."""
        return [dict(r) for r in self._query("SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?",
                                             (event_id, limit))]

    def query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        """A read-only query for the status page and the metrics (SELECT only)."""
        if not sql.lstrip().upper().startswith("SELECT"):
            raise ValueError("Store.query runs SELECT statements only")
        return self._query(sql, args)

    def set_meta(self, key: str, value: str) -> None:
        """Store a small key/value (e.g. the daemon's live status line)."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def get_meta(self, key: str) -> str | None:
        """Read a value stored by :meth:`set_meta`."""
        rows = self._query("SELECT value FROM meta WHERE key=?", (key,))
        return rows[0]["value"] if rows else None
