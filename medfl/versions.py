"""Which agent versions a coordinator serves: its own minor version and the one before.

Agents and coordinator exchange their software versions at connect (HELLO's ``version``,
WELCOME's ``version``) beside the wire protocol version every envelope carries
(:data:`medfl.wire.messages.PROTOCOL_VERSION`). The coordinator serves agents of its own major
version whose minor version is its own or one older, so hospitals can upgrade a release after
the coordinator. Anything else is refused by name: which side to upgrade, and to what.

References
----------
.. [1] T. Preston-Werner, "Semantic Versioning 2.0.0", https://semver.org (major.minor.patch).
"""

from __future__ import annotations

import re

from medfl import __version__

__all__ = ["SERVED_MINOR_VERSIONS_BEHIND", "agent_refusal", "parse_version"]

#: how many minor versions an agent may lag the coordinator
SERVED_MINOR_VERSIONS_BEHIND = 1

_SEMVER = re.compile(r"(\d{1,6})\.(\d{1,6})(?:\.(\d{1,6}))?(?:[-+.]?[A-Za-z][0-9A-Za-z.+_-]*|[-+][0-9A-Za-z.+_-]*)?")


def parse_version(text: str) -> tuple[int, int, int] | None:
    """``(major, minor, patch)`` of a version such as ``0.1.0`` or ``1.2.3rc1``; None if it is not one."""
    m = _SEMVER.fullmatch(text or "")
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def agent_refusal(agent: str, coordinator: str = __version__) -> str | None:
    """Why a coordinator at version ``coordinator`` does not serve an agent at ``agent``; None if it does.

    Parameters
    ----------
    agent : str
        The agent's version from its HELLO ("" when it sent none).
    coordinator : str
        The coordinator's version (default: this installation's).
    """
    theirs, ours = parse_version(agent), parse_version(coordinator)
    if ours is None:  # a development build without a release number serves everyone
        return None
    older = f"{ours[0]}.{max(0, ours[1] - SERVED_MINOR_VERSIONS_BEHIND)}"
    want = f"medfl-agent {ours[0]}.{ours[1]}" + (f" (or {older})" if older != f"{ours[0]}.{ours[1]}" else "")
    if theirs is None:
        return (f"the agent sent no usable version ({agent!r:.40}); this coordinator runs medfl {coordinator} and "
                f"serves {want}: upgrade medfl-agent")
    if theirs[0] != ours[0] or theirs[1] < ours[1] - SERVED_MINOR_VERSIONS_BEHIND:
        if theirs[:2] < ours[:2]:
            return (f"medfl-agent {agent} is too old for this coordinator (medfl {coordinator}, which serves "
                    f"{want}): upgrade medfl-agent to {ours[0]}.{ours[1]}")
    if theirs[:2] > ours[:2]:
        return (f"medfl-agent {agent} is newer than this coordinator (medfl {coordinator}): the operator upgrades "
                f"medfl-coordinator to {theirs[0]}.{theirs[1]} or later (a coordinator serves its own minor version "
                "and the one before), or this hospital stays on " + want)
    return None
