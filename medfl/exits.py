"""Registry of daemon exit codes; daemons and CLIs leave through :func:`die`.

Each code carries a help text that tells the operator what to do next.
"""

from __future__ import annotations

import enum
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from medfl.errors import (
    AuthError,
    ConfigError,
    ConfigNotFound,
    DataError,
    MedflError,
    NotFound,
    PolicyViolation,
    SessionAborted,
    StateError,
)

__all__ = ["ExitCode", "die", "run_command"]

log = logging.getLogger(__name__)


class ExitCode(enum.IntEnum):
    """Exit codes of medfl programs."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    CONFIG = 3
    AUTH = 4
    STATE = 5
    PORT_IN_USE = 6
    JOB_FAILED = 7
    SESSION_ABORTED = 8
    POLICY = 9
    NO_CONFIG = 10
    DATA = 11
    INTERRUPTED = 130


HELP: dict[ExitCode, str] = {
    ExitCode.OK: "finished normally",
    ExitCode.FAILURE: "unexpected failure; the log above has the traceback, please report it",
    ExitCode.USAGE: "bad command line; run with --help",
    ExitCode.CONFIG: "fix the configuration problems listed above and start again",
    ExitCode.AUTH: "a key is missing or not approved; check the key files and "
                   "'medfl-coordinator nodes list'",
    ExitCode.STATE: "the state folder is inconsistent; restore it from backup or point "
                    "the config at a fresh folder",
    ExitCode.PORT_IN_USE: "the address is taken; stop the other process or change the bind address",
    ExitCode.JOB_FAILED: "the job failed; 'medfl-coordinator status' shows why",
    ExitCode.SESSION_ABORTED: "the encrypted-inference session was aborted; the message names the party or "
                              "check that stopped it (a timeout means a party is down: check the model server "
                              "and the dealer)",
    ExitCode.POLICY: "the local policy (agent.toml) forbids this; change the request or the policy",
    ExitCode.NO_CONFIG: "no configuration file found; pass --config PATH or set the environment variable named "
                        "above (or create one with the program's 'init')",
    ExitCode.DATA: "a data set or image named above is missing, empty or unreadable; fix or replace that file "
                   "(an agent's data set is the [data] path of agent.toml)",
    ExitCode.INTERRUPTED: "stopped by the operator",
}


def die(code: ExitCode, message: str = "") -> NoReturn:
    """Print ``message`` and the help of ``code`` to stderr and exit with ``code``.

    Parameters
    ----------
    code : ExitCode
        Why the program stops.
    message : str
        What happened, with the values seen.
    """
    if message:
        print(f"error: {message}", file=sys.stderr)
    if code != ExitCode.OK:
        print(f"[exit {int(code)}: {HELP[code]}]", file=sys.stderr)
        log.debug("exit %d: %s", int(code), message)
    sys.exit(int(code))


def _stdout_broken() -> bool:
    """Whether stdout's reader has gone (POLLERR on a pipe); True when it cannot be told."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return True


def _stdout_closed() -> NoReturn:
    """Leave quietly because the reader of stdout went away (``... | head``).

    As the Python docs recommend (signal module, "Note on SIGPIPE"): point stdout at devnull so
    the interpreter's final flush does not raise again, and exit with 1 and no traceback.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (replaced by a test harness)
        pass
    finally:
        os.close(devnull)
    log.debug("stdout closed by its reader; stopping")
    sys.exit(int(ExitCode.FAILURE))


def run_command(command: Callable[..., Any], *args: Any) -> None:
    """Run a CLI command, leaving through :func:`die` with the exit code of any medfl error.

    A closed stdout (the command piped into ``head``) ends it quietly, without a traceback.

    Parameters
    ----------
    command : callable
        The sub-command's function.
    *args
        Its arguments.
    """
    try:
        command(*args)
        sys.stdout.flush()  # inside the try: a closed pipe shows here, not in the interpreter's exit
    except BrokenPipeError:
        if not _stdout_broken():
            raise  # a socket or a child's pipe, not our stdout: a real failure
        _stdout_closed()
    except ConfigNotFound as exc:
        die(ExitCode.NO_CONFIG, str(exc))
    except ConfigError as exc:
        die(ExitCode.CONFIG, str(exc))
    except DataError as exc:
        die(ExitCode.DATA, f"data: {exc}")
    except AuthError as exc:
        die(ExitCode.AUTH, str(exc))
    except (StateError, NotFound) as exc:
        die(ExitCode.STATE, str(exc))
    except SessionAborted as exc:
        die(ExitCode.SESSION_ABORTED, f"session aborted ({exc.code}): {exc}")
    except PolicyViolation as exc:
        die(ExitCode.POLICY, str(exc))
    except MedflError as exc:
        die(ExitCode.FAILURE, str(exc))
    except KeyboardInterrupt:
        die(ExitCode.INTERRUPTED)
