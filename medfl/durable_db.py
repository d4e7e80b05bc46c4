"""The one way medfl opens its SQLite state: WAL, ``synchronous=FULL``, usable from several threads.

The coordinator's store, the agent's privacy ledger and the PACS audit log all keep state that
must survive a crash at any moment (a committed transaction is on disk when ``COMMIT`` returns),
and all are shared by threads behind their own lock.
"""

from __future__ import annotations

import pathlib
import sqlite3
from collections.abc import Sequence

__all__ = ["open_durable"]


def open_durable(path: str | pathlib.Path, schema: str, *, schema_version: int | None = None,
                 added_columns: Sequence[tuple[str, str, str]] = (), rows: bool = False) -> sqlite3.Connection:
    """Open (creating its folder and tables) a durable SQLite database in autocommit mode.

    Parameters
    ----------
    path : str or Path
        The database file, or ``":memory:"`` (tests; no WAL).
    schema : str
        ``CREATE TABLE IF NOT EXISTS`` statements.
    schema_version : int, optional
        Recorded in a ``meta(key, value)`` table of ``schema`` on first creation.
    added_columns : sequence of (table, column, declaration)
        Columns added after the first release, added to older files (with their defaults).
    rows : bool
        Rows as :class:`sqlite3.Row` (by name) instead of tuples.

    Raises
    ------
    sqlite3.DatabaseError
        If the file is not a usable database; callers turn it into their own actionable error.
    """
    name = str(path)
    if name != ":memory:":
        pathlib.Path(name).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(name, timeout=30.0, check_same_thread=False, isolation_level=None)
    if rows:
        db.row_factory = sqlite3.Row
    if name != ":memory:":
        db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(schema)
    for table, column, decl in added_columns:
        have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
    if schema_version is not None:
        db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(schema_version),))
    return db
