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
import logging
import os
import pathlib
import threading
import time

__all__ = ["DROP_LOG_EVERY_S", "DurableQueue", "Quarantine", "uid_hash"]

log = logging.getLogger(__name__)

#: a full quarantine logs one warning (with the count of instances not kept) at most this often
DROP_LOG_EVERY_S = 60.0


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
    """Where rejected input goes, each file with a ``.reason.json`` beside it, capped in size.

    Every arrival gets its own pair of files, named ``<second>-<uid-hash[:16]>-<bytes-hash[:16]>``
    (plus ``-2``, ``-3``... when that name is taken), so two different files with one SOP
    Instance UID, or the same file sent twice in a second, never overwrite each other's
    evidence; the ``.dcm`` holds the bytes exactly as received. The folder's own size is capped
    at ``max_bytes``: a refused instance that would pass the cap is still refused (its sender
    keeps it, nothing acknowledged is lost) but not stored; :attr:`dropped` counts them and a
    warning with the count is logged at most every :data:`DROP_LOG_EVERY_S`. An instance that
    was already acknowledged (``force=True``) is always stored, over the cap if need be.

    Parameters
    ----------
    root : Path
        The quarantine folder (created).
    max_bytes : int, optional
        The cap on the folder's size; None: no cap.
    """

    def __init__(self, root: pathlib.Path, max_bytes: int | None = None):
        self.root = pathlib.Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.dropped = 0
        self._lock = threading.Lock()
        self._used = sum(p.stat().st_size for p in self.root.iterdir() if p.is_file())
        self._last_drop_log = -float("inf")
        self._dropped_since_log = 0

    @property
    def used_bytes(self) -> int:
        """Bytes the quarantine's files take (counted at start, then per write)."""
        return self._used

    def put(self, key: str, data: bytes | None, reason: str, status: int, *, force: bool = False,
            **details: object) -> pathlib.Path | None:
        """Store the rejected bytes (if any) and why; the files' base path, or None if over the cap.

        Parameters
        ----------
        key : str
            The SHA-256 of the SOP Instance UID (or of a placeholder when unparsable).
        data : bytes or None
            The instance as received.
        reason, status
            Why it was refused, and the DICOM status sent back.
        force : bool
            Store even over the cap (the instance was acknowledged before it failed).
        **details
            More fields for the ``.reason.json``.
        """
        digest = hashlib.sha256(data).hexdigest() if data is not None else None
        doc = {"reason": reason, "dicom_status": f"0x{status:04X}", "uid_sha256": key, "bytes_sha256": digest,
               "size": len(data) if data is not None else 0, "time": time.time(), **details}
        body = json.dumps(doc, indent=2, default=str).encode()
        need = len(body) + (len(data) if data is not None else 0)
        with self._lock:
            if not force and self.max_bytes is not None and self._used + need > self.max_bytes:
                self._note_drop(need)
                return None
            stamp = time.strftime("%Y%m%dT%H%M%S")
            stem = f"{stamp}-{key[:16]}-{(digest or uid_hash(str(time.time_ns())))[:16]}"
            base, n = self.root / stem, 1
            while base.with_suffix(".reason.json").exists() or base.with_suffix(".dcm").exists():
                n += 1
                base = self.root / f"{stem}-{n}"
            if data is not None:
                write_atomic(base.with_suffix(".dcm"), data)
            write_atomic(base.with_suffix(".reason.json"), body)
            self._used += need
        return base

    def _note_drop(self, need: int) -> None:
        self.dropped += 1
        self._dropped_since_log += 1
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_EVERY_S:
            log.warning("quarantine full (%d of %d bytes used, %d more needed): %d refused instance(s) not kept "
                        "since the last warning (%d in all); they were still refused, so their senders keep them. "
                        "Review and delete files in %s or raise [pacs] quarantine_max_mb", self._used,
                        self.max_bytes, need, self._dropped_since_log, self.dropped, self.root)
            self._last_drop_log = now
            self._dropped_since_log = 0
