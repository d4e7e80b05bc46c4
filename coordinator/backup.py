"""Backup and restore of the coordinator's state: the SQLite store and the checkpoints.

``backup DIR`` copies the store through SQLite's online backup API (a consistent snapshot
taken while the daemon keeps writing: readers never block the WAL writer for long), then the
checkpoints the snapshot refers to plus any other file under ``checkpoints/``, and writes a
``manifest.json`` with each file's size and SHA-256. The store is copied first: a round
committed after the snapshot only adds a checkpoint the snapshot does not mention, so the
restored coordinator resumes from the last round the snapshot holds, whose checkpoint is
always there (it is written before its round row commits).

``restore DIR`` verifies every hash before it writes anything, refuses a non-empty state
folder unless ``force`` (and always while a daemon holds the state lock), copies into a
temporary folder next to the state and renames it into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import sqlite3
import time
from dataclasses import dataclass

from coordinator.statelock import StateLock
from medfl import __version__
from medfl.errors import StateError

__all__ = ["BackupResult", "backup", "restore"]

MANIFEST = "manifest.json"
_DB = "coordinator.sqlite"


@dataclass(frozen=True)
class BackupResult:
    """What a backup or restore wrote: the folder, the files, their bytes, the rounds in the store."""

    path: pathlib.Path
    files: int
    bytes: int
    rounds: int


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _snapshot(db_path: pathlib.Path, dest: pathlib.Path) -> int:
    """Copy the live store with the online backup API; returns the number of round rows copied."""
    src = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30.0)
    dst = sqlite3.connect(dest)
    try:
        src.backup(dst, pages=4096)
        dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
        return int(dst.execute("SELECT COUNT(*) FROM rounds").fetchone()[0])
    finally:
        dst.close()
        src.close()


def backup(state_dir: pathlib.Path, out_dir: pathlib.Path) -> BackupResult:
    """Write a consistent copy of ``state_dir`` (store + checkpoints) and its manifest to ``out_dir``.

    Parameters
    ----------
    state_dir : Path
        The coordinator's ``[coordinator] state_dir`` (the daemon may be running).
    out_dir : Path
        A new or empty folder.

    Raises
    ------
    StateError
        No store in ``state_dir``, or ``out_dir`` is not empty.
    """
    db_path = state_dir / _DB
    if not db_path.is_file():
        raise StateError(f"no coordinator store at {db_path}; check --config (state_dir = {state_dir})")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise StateError(f"backup folder {out_dir} is not empty; give a new folder (e.g. one per date)")
    out_dir.mkdir(parents=True, exist_ok=True)
    rounds = _snapshot(db_path, out_dir / _DB)
    files = [out_dir / _DB]
    ckpt = state_dir / "checkpoints"
    for src in sorted(ckpt.rglob("*")) if ckpt.is_dir() else []:
        if src.is_file() and not src.name.endswith(".tmp"):
            dest = out_dir / "checkpoints" / src.relative_to(ckpt)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
            files.append(dest)
    entries = {str(f.relative_to(out_dir)): {"bytes": f.stat().st_size, "sha256": _sha256(f)} for f in files}
    manifest = {"format": 1, "medfl": __version__, "created": time.time(), "state_dir": str(state_dir.resolve()),
                "rounds": rounds, "files": entries}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return BackupResult(path=out_dir, files=len(files), bytes=sum(f.stat().st_size for f in files),
                        rounds=rounds)


def _verify(backup_dir: pathlib.Path) -> dict:
    mpath = backup_dir / MANIFEST
    if not mpath.is_file():
        raise StateError(f"{backup_dir} has no {MANIFEST}; it is not a medfl-coordinator backup")
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise StateError(f"{mpath} is unreadable ({exc}); the backup is damaged") from exc
    bad = []
    for rel, entry in sorted(files.items()):
        p = backup_dir / rel
        if pathlib.PurePosixPath(rel).is_absolute() or ".." in pathlib.PurePosixPath(rel).parts:
            bad.append(f"{rel}: path outside the backup")
        elif not p.is_file():
            bad.append(f"{rel}: missing")
        elif _sha256(p) != entry.get("sha256"):
            bad.append(f"{rel}: SHA-256 differs from the manifest")
    if _DB not in files:
        bad.append(f"{_DB}: not in the manifest")
    if bad:
        raise StateError(f"backup {backup_dir} failed verification, nothing was restored: " + "; ".join(bad[:10]))
    return manifest


def restore(backup_dir: pathlib.Path, state_dir: pathlib.Path, *, force: bool = False) -> BackupResult:
    """Verify ``backup_dir`` and make it the coordinator's ``state_dir``.

    Checkpoint paths stored in the round rows are rewritten to the new folder, so a backup
    restores onto another machine or another ``state_dir``.

    Parameters
    ----------
    backup_dir : Path
        A folder written by :func:`backup`.
    state_dir : Path
        The coordinator's state folder (must be empty or absent unless ``force``).
    force : bool
        Replace an existing state folder (the old one is kept as ``state_dir.replaced-<time>``).

    Raises
    ------
    StateError
        Verification failed, the state folder is in use by a daemon, or it is not empty without ``force``.
    """
    manifest = _verify(backup_dir)
    state_dir = pathlib.Path(state_dir)
    lock = StateLock(state_dir, purpose="restore") if state_dir.exists() else None
    if lock is not None:
        lock.acquire()
    try:
        existing = [p for p in state_dir.iterdir() if p.name != "daemon.lock"] if state_dir.exists() else []
        if existing and not force:
            raise StateError(f"{state_dir} is not empty ({len(existing)} entries); restore into an empty state_dir "
                             "or pass --force (the current state is kept aside as state_dir.replaced-<time>)")
        tmp = state_dir.with_name(state_dir.name + f".restoring-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        for rel in manifest["files"]:
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(backup_dir / rel, dest)
        _repoint_checkpoints(tmp / _DB, pathlib.Path(manifest.get("state_dir", "")), state_dir.resolve())
        if state_dir.exists():
            state_dir.rename(state_dir.with_name(state_dir.name + time.strftime(".replaced-%Y%m%d-%H%M%S")))
        tmp.rename(state_dir)
    finally:
        if lock is not None:
            lock.release()
    files = manifest["files"]
    return BackupResult(path=state_dir, files=len(files), bytes=sum(int(e["bytes"]) for e in files.values()),
                        rounds=int(manifest.get("rounds", 0)))


def _repoint_checkpoints(db_path: pathlib.Path, old_state: pathlib.Path, new_state: pathlib.Path) -> None:
    """Rewrite round rows' checkpoint paths from the backed-up state folder to the restored one."""
    db = sqlite3.connect(db_path)
    try:
        rows = db.execute("SELECT job_id, round, checkpoint FROM rounds").fetchall()
        with db:
            for job_id, rnd, path in rows:
                p = pathlib.Path(path)
                for base in (old_state, old_state.resolve() if str(old_state) else old_state):
                    if str(base) and p.is_relative_to(base):
                        db.execute("UPDATE rounds SET checkpoint=? WHERE job_id=? AND round=?",
                                   (str(new_state / p.relative_to(base)), job_id, rnd))
                        break
    finally:
        db.close()
