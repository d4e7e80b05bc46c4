"""Daemons of the apps as real processes on loopback: free ports, start with log files, wait, stop."""

from __future__ import annotations

import contextlib
import os
import pathlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence

from medfl.errors import SessionAborted

__all__ = ["daemons", "free_port", "wait_for_line"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def daemons(cmds: Sequence[tuple[str, list[str]]], logs: Mapping[str, pathlib.Path], *,
            env: Mapping[str, str] | None = None, grace_s: float = 10.0) -> Iterator[dict[str, subprocess.Popen]]:
    """Start ``python -m <args>`` for each ``(name, args)``, output to ``logs[name]``; stop them all on exit.

    Parameters
    ----------
    cmds : sequence of (name, args)
        Each daemon's name and its ``python -m`` arguments (e.g. ``["coordinator.cli", "serve", ...]``).
    logs : mapping of name to path
        Where each daemon's stdout and stderr go.
    env : mapping, optional
        Extra environment variables (``PYTHONUNBUFFERED=1`` is always set).
    grace_s : float
        How long the daemons have, all together, to exit after SIGTERM before they are killed.
    """
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    procs: dict[str, subprocess.Popen] = {}
    files = []
    try:
        for name, args in cmds:
            fh = open(logs[name], "w")  # noqa: SIM115 - closed below
            files.append(fh)
            procs[name] = subprocess.Popen([sys.executable, "-m", *args], stdout=fh, stderr=subprocess.STDOUT,
                                           env=full_env)
        yield procs
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + grace_s
        for p in procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for fh in files:
            fh.close()


def wait_for_line(proc: subprocess.Popen, marker: str, timeout_s: float, log: pathlib.Path) -> None:
    """Return once ``marker`` appears in the daemon's log; a typed error if it exits or stays silent."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SessionAborted(f"local {log.stem} exited with "
                                 f"{proc.returncode}: {log.read_text()[-2000:]}", code="peer")
        if marker in log.read_text():
            return
        time.sleep(0.1)
    raise SessionAborted(f"no '{marker}' from a local party within {timeout_s:g} s: {log.read_text()[-2000:]}",
                         code="timeout")
