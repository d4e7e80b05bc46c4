"""The one error tree of medfl, rooted at :class:`MedflError`.

Every leaf also subclasses the matching built-in exception so callers that do not
know medfl can still catch it (``except ValueError``). Messages give the value seen
and the fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

__all__ = [
    "AuthError",
    "ConfigError",
    "ConfigNotFound",
    "DataError",
    "MalformedMessage",
    "MedflError",
    "MessageTooLarge",
    "NonFiniteError",
    "NotFound",
    "OutOfOrder",
    "PolicyViolation",
    "Rejected",
    "RingOverflowError",
    "SecAggAbort",
    "SessionAborted",
    "ShareError",
    "StateError",
    "UnknownPeer",
    "UnsupportedVersion",
    "WireError",
    "did_you_mean",
]


class MedflError(Exception):
    """Root of every error medfl raises on purpose."""


class ConfigError(MedflError, ValueError):
    """A configuration file (TOML) or override has one or more bad values.

    Parameters
    ----------
    problems : sequence of (path, message)
        Every problem found, each by its dotted TOML path, so the user can fix all of
        them in one edit.
    source : str, optional
        The file the values came from.
    """

    def __init__(self, problems: Sequence[tuple[str, str]], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        lines = [f"{len(self.problems)} configuration problem(s){where}:"]
        lines += [f"  {path or '<root>'}: {msg}" for path, msg in self.problems]
        super().__init__("\n".join(lines))


class PolicyViolation(MedflError, PermissionError):
    """A request breaks the local policy of an agent (agent.toml)."""


class AuthError(MedflError, PermissionError):
    """A key, fingerprint or enrollment is wrong or missing."""


class DataError(MedflError, ValueError):
    """A data set on disk is missing, empty or malformed."""


class NotFound(MedflError, KeyError):
    """A name looked up in a registry or a store does not exist."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class StateError(MedflError, RuntimeError):
    """Persistent state (database, checkpoint) is inconsistent or missing."""


class ConfigNotFound(MedflError, FileNotFoundError):
    """No configuration file where a command looked; the message lists the places tried and the fix."""


class NonFiniteError(MedflError, ValueError):
    """An input that must be finite holds NaN or infinity."""


class RingOverflowError(MedflError, OverflowError):
    """A value does not fit the fixed-point ring without wrapping."""


class ShareError(MedflError, ValueError):
    """Secret shares that cannot give a secret: too few, duplicated or inconsistent."""


class SecAggAbort(MedflError, RuntimeError):
    """A secure-aggregation round cannot finish: fewer than the threshold of agents remain."""


class SessionAborted(MedflError, RuntimeError):
    """An encrypted-inference session stopped before its end.

    A party vanished, a dealer message failed authentication, was replayed or belongs to
    another session, or a party refused a step.
    ``code`` names the cause (``timeout``, ``auth``, ``replay``, ``foreign_session``, ``peer``,
    ``policy``, ``plan``, ``shutdown``) and is sent to the other party in the SMPC_ABORT message.
    """

    def __init__(self, message: str, *, code: str = "aborted"):
        super().__init__(message)
        self.code = code


class WireError(MedflError):
    """A message on the wire was rejected; ``code`` is sent back in the error reply."""

    code = "wire_error"


class MalformedMessage(WireError, ValueError):
    """Frames that do not parse as a medfl envelope."""

    code = "malformed"


class UnsupportedVersion(WireError, ValueError):
    """An envelope with a protocol version this side does not speak."""

    code = "unsupported_version"


class MessageTooLarge(WireError, ValueError):
    """A message larger than the socket's configured limit."""

    code = "too_large"


class OutOfOrder(WireError, ValueError):
    """A replayed sequence number, or a message for a stage that is not open."""

    code = "out_of_order"


class Rejected(WireError, ValueError):
    """A well-formed message the receiver refuses (a policy, state or data check failed)."""

    code = "rejected"


class IncompatibleVersion(WireError, ValueError):
    """An agent whose software version this coordinator does not serve (the message says what to upgrade)."""

    code = "incompatible_version"


class UnknownPeer(WireError, PermissionError):
    """A message from a peer that has not said hello (or was forgotten on restart)."""

    code = "unknown_peer"


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return a " did you mean 'x'?" suffix for ``name`` among ``choices``, or "".

    Parameters
    ----------
    name : str
        The name the user gave.
    choices : iterable of str
        The valid names.
    """
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""
