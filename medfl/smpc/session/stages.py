"""The life of one encrypted-inference session: stages, allowed transitions, and its status record.

``queued -> offline -> online -> closed``, and ``aborted`` from any stage before ``closed``.
Offline: the dealer's material reaches both parties (sealed; the data owner's half relayed by
the model server). Online: weight masks opened once, then each image. The record is what
``medfl-coordinator status`` shows.

Compatibility: :meth:`SessionRecord.to_dict` keys are never removed; new keys are optional.
"""

from __future__ import annotations

import enum
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from medfl.errors import StateError

__all__ = ["SessionRecord", "Stage", "TRANSITIONS"]


class Stage(enum.StrEnum):
    """Stages of a session."""

    QUEUED = "queued"
    OFFLINE = "offline"
    ONLINE = "online"
    CLOSED = "closed"
    ABORTED = "aborted"


TRANSITIONS: dict[Stage, frozenset[Stage]] = {
    Stage.QUEUED: frozenset({Stage.OFFLINE, Stage.ABORTED}),
    Stage.OFFLINE: frozenset({Stage.ONLINE, Stage.ABORTED}),
    Stage.ONLINE: frozenset({Stage.CLOSED, Stage.ABORTED}),
    Stage.CLOSED: frozenset(),
    Stage.ABORTED: frozenset(),
}


@dataclass
class SessionRecord:
    """One session as the model server tracks it.

    Attributes
    ----------
    session : str
        Random id (hex).
    model : str
        The served model's name.
    agent : str
        Fingerprint of the data owner's CURVE key.
    dealer : str
        Fingerprint of the dealer's key.
    images : int
        Images requested.
    """

    session: str
    model: str
    agent: str
    dealer: str
    images: int
    stage: Stage = Stage.QUEUED
    message: str = ""
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    offline_seconds: float | None = None
    online_seconds: float | None = None
    bytes_sent: int = 0
    rounds: int = 0

    def move(self, to: Stage, message: str = "") -> None:
        """Change stage after checking the transition table.

        Raises
        ------
        StateError
            The move is not allowed from the current stage.
        """
        if to not in TRANSITIONS[self.stage]:
            raise StateError(f"session {self.session}: cannot go from {self.stage} to {to}")
        self.stage = to
        self.message = message or self.message
        self.updated = time.time()

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-able values."""
        d = asdict(self)
        d["stage"] = str(self.stage)
        return d
