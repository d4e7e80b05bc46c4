"""The privacy ledger: every DP-SGD run an agent released, per job and per dataset, durably on disk.

Each agent keeps one SQLite file under its state dir. An entry is written (and fsync'd:
WAL with ``synchronous=FULL``, committed before the call returns) *before* the update it
describes leaves the agent, so a crash can over-count but never under-count what was spent.
Budgets are then computed from the ledger: epsilon of one job (all its rounds and retries)
and the total epsilon of a dataset across every job that ever trained on it.
``Ledger(":memory:")`` is the in-memory twin used by tests.

Compatibility: columns are only ever added (with defaults); an entry's meaning never changes.

References
----------
.. [1] Google, dp-accounting: ``PrivacyAccountant.ledger`` keeps the composed ``DpEvent``s
   (the immutable events stored here as runs).
.. [2] I. Mironov, "Renyi differential privacy", CSF 2017 (composition across jobs).
"""

from __future__ import annotations

import pathlib
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field

from medfl.durable_db import open_durable
from medfl.errors import StateError
from medfl.privacy.accountant import SgdRun, check_accountant, epsilon

__all__ = ["Ledger", "LedgerEntry", "dataset_key"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset TEXT NOT NULL,
    job_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 1,
    sample_rate REAL NOT NULL,
    noise_multiplier REAL NOT NULL,
    steps INTEGER NOT NULL,
    max_grad_norm REAL NOT NULL,
    delta REAL NOT NULL,
    accountant TEXT NOT NULL,
    epsilon REAL NOT NULL,
    recorded_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_dataset ON entries (dataset, job_id);
"""


def dataset_key(kind: str, path: str | pathlib.Path) -> str:
    """The ledger's name of a dataset: its kind and resolved path (the same records, whatever the job).

    Parameters
    ----------
    kind : str
        The agent's ``data.kind`` (``folder``, ``npz``).
    path : str or Path
        The agent's ``data.path``.
    """
    return f"{kind}:{pathlib.Path(path).expanduser().resolve()}"


@dataclass(frozen=True)
class LedgerEntry:
    """One released DP-SGD run: a round (attempt) of a job at one agent.

    ``epsilon`` is the job's epsilon at ``delta`` after this entry, stored for audit;
    budgets are always recomputed from the runs.
    """

    dataset: str
    job_id: str
    round: int
    run: SgdRun
    max_grad_norm: float
    delta: float
    accountant: str
    epsilon: float
    attempt: int = 1
    recorded_at: float = field(default_factory=time.time)


class Ledger:
    """An append-only, crash-safe ledger of DP events (SQLite).

    Parameters
    ----------
    path : str or Path
        Database file (created with its folder), or ``":memory:"``.
    """

    def __init__(self, path: str | pathlib.Path):
        self.path = str(path)
        self._lock = threading.RLock()
        try:
            self._db = open_durable(self.path, _SCHEMA, schema_version=SCHEMA_VERSION)
        except sqlite3.DatabaseError as exc:
            raise StateError(f"cannot open privacy ledger {self.path}: {exc}; restore it from backup. Do not "
                             "delete it: the agent would forget the privacy budget it already spent") from exc

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def record(self, entry: LedgerEntry) -> None:
        """Append ``entry``; durable on disk when this returns.

        Parameters
        ----------
        entry : LedgerEntry
            The run about to be released.
        """
        check_accountant(entry.accountant)
        r = entry.run
        row = (entry.dataset, entry.job_id, entry.round, entry.attempt, r.sample_rate, r.noise_multiplier, r.steps,
               entry.max_grad_norm, entry.delta, entry.accountant, entry.epsilon, entry.recorded_at)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT INTO entries (dataset, job_id, round, attempt, sample_rate, "
                                 "noise_multiplier, steps, max_grad_norm, delta, accountant, epsilon, recorded_at) "
                                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def entries(self, *, dataset: str | None = None, job_id: str | None = None) -> list[LedgerEntry]:
        """Entries in the order they were recorded, optionally of one dataset and/or job."""
        sql, args = "SELECT * FROM entries", []
        where = [(c, v) for c, v in (("dataset", dataset), ("job_id", job_id)) if v is not None]
        if where:
            sql += " WHERE " + " AND ".join(f"{c}=?" for c, _ in where)
            args = [v for _, v in where]
        with self._lock:
            cur = self._db.execute(sql + " ORDER BY id", args)
            names = [d[0] for d in cur.description]
            rows = [dict(zip(names, values, strict=True)) for values in cur.fetchall()]
        return [LedgerEntry(dataset=d["dataset"], job_id=d["job_id"], round=d["round"], attempt=d["attempt"],
                            run=SgdRun(d["sample_rate"], d["noise_multiplier"], d["steps"]),
                            max_grad_norm=d["max_grad_norm"], delta=d["delta"], accountant=d["accountant"],
                            epsilon=d["epsilon"], recorded_at=d["recorded_at"]) for d in rows]

    def runs(self, *, dataset: str, job_id: str | None = None) -> list[SgdRun]:
        """The runs spent on ``dataset`` (by one job, or by all), in order."""
        return [e.run for e in self.entries(dataset=dataset, job_id=job_id)]

    def job_epsilon(self, *, dataset: str, job_id: str, delta: float, accountant: str = "rdp") -> float:
        """Epsilon at ``delta`` that job ``job_id`` has spent on ``dataset``."""
        return epsilon(self.runs(dataset=dataset, job_id=job_id), delta=delta, accountant=accountant)

    def dataset_epsilon(self, *, dataset: str, delta: float, accountant: str = "rdp") -> float:
        """Epsilon at ``delta`` spent on ``dataset`` by every job together (their composition [2])."""
        return epsilon(self.runs(dataset=dataset), delta=delta, accountant=accountant)

    def summary(self, *, dataset: str) -> list[dict[str, object]]:
        """One dict per entry (for ``medfl-agent privacy`` and audits)."""
        out = []
        for e in self.entries(dataset=dataset):
            d = asdict(e)
            d.update(d.pop("run"))
            out.append(d)
        return out
