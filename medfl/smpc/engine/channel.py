"""The channel between the two compute parties, and its in-memory twin that counts bytes and rounds.

An *opening* is one communication round: each party sends its share of a masked value and
receives the other's. The in-memory channel runs both parties in one process and records,
per party, every byte it received, so tests can inspect a party's whole view.

References
----------
.. [1] Beaver, "Efficient Multiparty Protocols Using Circuit Randomization", CRYPTO 1991
   (opening masked values).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

__all__ = ["Channel", "InMemoryChannel"]


class Channel(Protocol):
    """Exchange of shares between party 0 and party 1; one call is one round."""

    def open(self, s0: np.ndarray, s1: np.ndarray) -> np.ndarray:
        """Send each party's share to the other and return the opened value ``s0 + s1``."""
        ...


class InMemoryChannel:
    """Both parties in one process; counts bytes sent by each party and rounds.

    Attributes
    ----------
    bytes_sent : list of int
        Bytes sent by party 0 and party 1.
    rounds : int
        Number of openings.
    views : list of list of bytes
        Every message each party received, when ``record`` is true.

    References
    ----------
    .. [1] Beaver, CRYPTO 1991.
    """

    def __init__(self, *, record: bool = False) -> None:
        """Create an empty channel; ``record`` keeps every received message."""
        self.bytes_sent = [0, 0]
        self.rounds = 0
        self.record = record
        self.views: list[list[bytes]] = [[], []]

    def open(self, s0: np.ndarray, s1: np.ndarray) -> np.ndarray:
        """Open ``s0 + s1`` in one round, counting both directions."""
        if s0.dtype != np.uint64 or s1.dtype != np.uint64 or s0.shape != s1.shape:
            raise ValueError(f"open needs two uint64 shares of one shape, got {s0.dtype}{s0.shape} and "
                             f"{s1.dtype}{s1.shape}")
        self.bytes_sent[0] += s0.nbytes
        self.bytes_sent[1] += s1.nbytes
        self.rounds += 1
        if self.record:
            self.views[1].append(np.ascontiguousarray(s0).tobytes())
            self.views[0].append(np.ascontiguousarray(s1).tobytes())
        return s0 + s1
