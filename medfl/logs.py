"""Log handler set-up for entry points (text or JSON lines) and their shutdown line; library modules only log."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable

from medfl import envvars

__all__ = ["Shutdown", "setup_logging", "stop_on_signals"]

log = logging.getLogger(__name__)


#: attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged as a field
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class _JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ms), level, logger, msg, pid, then the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and key not in doc:
                doc[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def setup_logging(name: str, *, level: str | None = None, fmt: str | None = None, stream=None) -> None:
    """Install one handler on the root logger (entry points only).

    Parameters
    ----------
    name : str
        Program name shown in text logs.
    level : str, optional
        Level name; default from ``MEDFL_LOG_LEVEL`` or INFO.
    fmt : {"text", "json"}, optional
        Default from ``MEDFL_LOG_FORMAT`` or text.
    stream : file, optional
        Where to write (default stderr).
    """
    level = level or envvars.get("MEDFL_LOG_LEVEL") or "INFO"
    fmt = fmt or envvars.get("MEDFL_LOG_FORMAT") or "text"
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())


class Shutdown:
    """What :func:`stop_on_signals` installed: which signal stopped the daemon, and its quick exit."""

    def __init__(self, stop: Callable[[], None]):
        self._stop = stop
        #: the name of the signal that stopped the daemon ("SIGTERM"), or None
        self.signalled: str | None = None

    def handler(self, signum: int, _frame: object) -> None:
        """The signal handler: one line at once, then ask the loop to return."""
        name = signal.Signals(signum).name
        if self.signalled is not None:
            log.warning("%s again: still shutting down", name)
            return
        self.signalled = name
        log.info("shutting down (%s)...", name)
        self._stop()

    def finish(self) -> None:
        """Once the daemon has closed what it holds: if a signal stopped it, say so and exit now (status 0).

        The interpreter's own teardown (torch, pydicom, ...) takes about two seconds and
        releases nothing the daemon has not closed itself, so it is skipped; logs and standard
        streams are flushed first. Without a signal this returns (the caller exits as usual).
        """
        if self.signalled is None:
            return
        log.info("stopped")
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(0)


def stop_on_signals(stop: Callable[[], None]) -> Shutdown:
    """Make SIGTERM and SIGINT log "shutting down (SIGTERM)..." at once and call ``stop`` (entry points only).

    The daemon's loop then returns within its poll interval (at most 200 ms) and closes what
    it holds; call :meth:`Shutdown.finish` after that. A second signal only says that the
    shutdown is still under way.

    Parameters
    ----------
    stop : callable
        Asks the daemon's loop to return (thread-safe, quick: it runs in the signal handler).

    Returns
    -------
    Shutdown
        The installed handler; ``finish()`` exits at once once the daemon has closed.
    """
    shutdown = Shutdown(stop)
    signal.signal(signal.SIGTERM, shutdown.handler)
    signal.signal(signal.SIGINT, shutdown.handler)
    return shutdown
