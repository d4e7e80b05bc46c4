"""The audit trail of every scan in SQLite: received, scored, sent, with the result and status.

Rows are keyed by the SHA-256 of the SOP Instance UID; no patient name, ID or UID is stored.
The ``scored`` state is written in the same transaction as the result, which is what makes
scoring exactly-once across crashes: a worker that finds a row already scored skips the scan.
"""

from __future__ import annotations

import pathlib
import sqlite3
import threading
import time
from typing import Any

from medfl.durable_db import open_durable

__all__ = ["AuditLog"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scans (
    uid_sha256 TEXT PRIMARY KEY,
    status TEXT NOT NULL,           -- received, scored, sent, quarantined, failed
    received_at REAL,
    scored_at REAL,
    sent_at REAL,
    score REAL,
    decision TEXT,
    model_id TEXT,
    model_round INTEGER,
    sop_class TEXT,
    reason TEXT,
    sr_sha256 TEXT,
    score_count INTEGER NOT NULL DEFAULT 0
);
"""


class AuditLog:
    """Thread-safe audit table.

    Parameters
    ----------
    path : Path or ":memory:"
        The database file.
    """

    def __init__(self, path: pathlib.Path | str):
        self._lock = threading.Lock()
        self._db = open_durable(path, _SCHEMA, rows=True)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def _exec(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    def received(self, key: str, sop_class: str) -> None:
        """A scan was acknowledged (or found in the watch folder)."""
        self._exec("INSERT INTO scans (uid_sha256, status, received_at, sop_class) VALUES (?, 'received', ?, ?) "
                   "ON CONFLICT(uid_sha256) DO UPDATE SET received_at=excluded.received_at "
                   "WHERE scans.status IN ('received', 'quarantined', 'failed')", (key, time.time(), sop_class))

    def is_scored(self, key: str) -> bool:
        """True once a result for this scan is committed."""
        row = self._exec("SELECT status FROM scans WHERE uid_sha256=?", (key,)).fetchone()
        return row is not None and row["status"] in ("scored", "sent")

    def scored(self, key: str, *, score: float, decision: str, model_id: str, model_round: int,
               sr_sha256: str) -> bool:
        """Commit a result; False (and nothing changed) if the scan was already scored."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE scans SET status='scored', scored_at=?, score=?, decision=?, model_id=?, model_round=?, "
                "sr_sha256=?, score_count=score_count+1 WHERE uid_sha256=? AND status NOT IN ('scored', 'sent')",
                (time.time(), score, decision, model_id, model_round, sr_sha256, key))
            return cur.rowcount == 1

    def sent(self, sr_sha256: str) -> None:
        """The SR for a scan reached the PACS."""
        self._exec("UPDATE scans SET status='sent', sent_at=? WHERE sr_sha256=? AND status='scored'",
                   (time.time(), sr_sha256))

    def failed(self, key: str, status: str, reason: str, sop_class: str = "") -> None:
        """A scan was quarantined or could not be processed."""
        self._exec("INSERT INTO scans (uid_sha256, status, received_at, reason, sop_class) VALUES (?, ?, ?, ?, ?) "
                   "ON CONFLICT(uid_sha256) DO UPDATE SET status=excluded.status, reason=excluded.reason "
                   "WHERE scans.status NOT IN ('scored', 'sent')", (key, status, time.time(), reason, sop_class))

    def send_failed(self, sr_sha256: str, reason: str) -> None:
        """The SR could not be delivered after all retries."""
        self._exec("UPDATE scans SET reason=? WHERE sr_sha256=?", (reason, sr_sha256))

    def row(self, key: str) -> dict[str, Any] | None:
        """One scan's row."""
        r = self._exec("SELECT * FROM scans WHERE uid_sha256=?", (key,)).fetchone()
        return dict(r) if r else None

    def rows(self) -> list[dict[str, Any]]:
        """Every row."""
        return [dict(r) for r in self._exec("SELECT * FROM scans ORDER BY received_at").fetchall()]
