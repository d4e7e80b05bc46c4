"""The state directory's lock: one daemon (or one restore) at a time on a ``state_dir``.

``serve`` holds an exclusive ``flock`` on ``state_dir/daemon.lock`` for its lifetime; a second
``serve`` on the same folder, or a ``restore`` into it while the daemon runs, is refused with
the holder's pid instead of two writers racing over the store and the checkpoints. The kernel
drops the lock when the process dies, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
import pathlib

from medfl.errors import StateError

__all__ = ["StateLock"]


class StateLock:
    """An exclusive, non-blocking lock on ``state_dir/daemon.lock``.

    Parameters
    ----------
    state_dir : Path
        The coordinator's ``[coordinator] state_dir``.
    purpose : str
        What the holder does ("serve", "restore"), written into the file for the refusal message.
    """

    def __init__(self, state_dir: pathlib.Path, *, purpose: str):
        self.path = pathlib.Path(state_dir) / "daemon.lock"
        self.purpose = purpose
        self._fd: int | None = None

    def acquire(self) -> StateLock:
        """Take the lock or raise :class:`StateError` naming the process that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise StateError(f"{self.path.parent} is in use by {holder}; stop that coordinator first "
                             "(systemctl stop medfl-coordinator), or point --config at another state_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.purpose} pid {os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (also dropped by the kernel when the process exits)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StateLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
