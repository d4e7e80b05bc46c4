"""Durable folders for DICOM instances: the inbox, the outbox and the quarantine.

A received instance is written to ``tmp/`` (fsync), then renamed into ``new/`` (and the folder
fsynced) before the C-STORE is acknowledged, so nothing acknowledged is ever lost. A worker
claims a file by renaming it from ``new/`` to ``work/`` (atomic, so two workers never take the
same file) and deletes it only after its result is committed; on restart everything left in
``work/`` goes back to ``new/``. File names are the SHA-256 of the SOP Instance UID: untrusted
identifiers never touch a path.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import time

__all__ = ["DurableQueue", "Quarantine", "uid_hash"]


def uid_hash(uid: str) -> str:
    """SHA-256 of a UID (hex, 64 chars): the only form a UID takes in paths and logs."""
    return hashlib.sha256(uid.encode("ascii", "replace")).hexdigest()


def _fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: pathlib.Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file, fsync it, rename, fsync the folder."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class DurableQueue:
    """A folder queue with ``new/`` and ``work/`` stages.

    Parameters
    ----------
    root : Path
        The queue's folder (created).
    """

    def __init__(self, root: pathlib.Path):
        self.root = pathlib.Path(root)
        self.new = self.root / "new"
        self.work = self.root / "work"
        for d in (self.new, self.work):
            d.mkdir(parents=True, exist_ok=True)

    def put(self, key: str, data: bytes) -> pathlib.Path:
        """Durably enqueue ``data`` under ``key`` (a hash); returns its path in ``new/``."""
        path = self.new / f"{key}.dcm"
        write_atomic(path, data)
        return path

    def recover(self) -> int:
        """Return claimed but unfinished items (a crash) to ``new/``; the count."""
        n = 0
        for p in self.work.glob("*.dcm"):
            os.replace(p, self.new / p.name)
            n += 1
        for p in self.root.rglob(".*.tmp"):
            p.unlink(missing_ok=True)
        return n

    def claim(self) -> pathlib.Path | None:
        """Take the oldest item (renamed into ``work/``), or None if the queue is empty."""
        got = self.claim_many(1)
        return got[0] if got else None

    def claim_many(self, limit: int) -> list[pathlib.Path]:
        """Take up to ``limit`` of the oldest items (each renamed into ``work/``), oldest first."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")

        def age(p: pathlib.Path) -> int:
            try:
                return p.stat().st_mtime_ns
            except FileNotFoundError:
                return 0

        taken: list[pathlib.Path] = []
        for p in sorted(self.new.glob("*.dcm"), key=age):
            if len(taken) >= limit:
                break
            target = self.work / p.name
            try:
                os.replace(p, target)
            except FileNotFoundError:
                continue  # another worker took it
            taken.append(target)
        return taken

    def release(self, path: pathlib.Path) -> None:
        """Give a claimed item back to ``new/`` (to be retried later)."""
        os.replace(path, self.new / path.name)

    def done(self, path: pathlib.Path) -> None:
        """Remove a finished item."""
        path.unlink(missing_ok=True)

    def pending(self) -> int:
        """Items waiting or in progress."""
        return len(list(self.new.glob("*.dcm"))) + len(list(self.work.glob("*.dcm")))


class Quarantine:
    """Where rejected input goes, each file with a ``.reason.json`` beside it."""

    def __init__(self, root: pathlib.Path):
        self.root = pathlib.Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def put(self, key: str, data: bytes | None, reason: str, status: int, **details: object) -> pathlib.Path:
        """Store the rejected bytes (if any) and why."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        base = self.root / f"{stamp}-{key[:16]}"
        if data is not None:
            write_atomic(base.with_suffix(".dcm"), data)
        doc = {"reason": reason, "dicom_status": f"0x{status:04X}", "uid_sha256": key, "time": time.time(), **details}
        write_atomic(base.with_suffix(".reason.json"), json.dumps(doc, indent=2, default=str).encode())
        return base
