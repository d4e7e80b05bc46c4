"""Log handler set-up for entry points (text or JSON lines); library modules only log."""

from __future__ import annotations

import json
import logging
import sys
import time

from medfl import envvars

__all__ = ["setup_logging"]


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "t": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


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
