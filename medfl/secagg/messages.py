"""The messages of a secure-aggregation round, as frozen dataclasses the wire can carry.

Every field is bytes, str, int, a list or a dict of those, or (for the masked upload) a NumPy
array sent as a raw tensor frame, so each message maps to a msgpack header without pickle.

Compatibility: fields are never removed, new fields are optional, meanings never change.

References
----------
.. [1] Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
   CCS 2017, figure 4 (rounds 0-4).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["AdvertiseKeys", "KeyRoster", "MaskedInput", "ShareDelivery", "ShareKeys", "UnmaskRequest",
           "UnmaskResponse"]


@dataclass(frozen=True)
class AdvertiseKeys:
    """Round 0, agent -> server: the agent's two X25519 public keys (``c`` for AEAD, ``s`` for masks)."""

    agent: str
    c_public: bytes
    s_public: bytes


@dataclass(frozen=True)
class KeyRoster:
    """Round 0, server -> agents: every advertised key, the graph seed and the round parameters.

    ``keys`` maps agent id to ``(c_public, s_public)``; ``degree`` 0 means the complete graph.
    """

    keys: dict[str, tuple[bytes, bytes]]
    graph_seed: bytes
    degree: int
    threshold: int
    nonce: bytes


@dataclass(frozen=True)
class ShareKeys:
    """Round 1, agent -> server: sealed shares for each neighbour, by receiver id."""

    agent: str
    sealed: dict[str, bytes]


@dataclass(frozen=True)
class ShareDelivery:
    """Round 1, server -> one agent: the sealed shares addressed to it, by sender id."""

    sealed: dict[str, bytes]


@dataclass(frozen=True)
class MaskedInput:
    """Round 2, agent -> server: the masked, quantized update (uint32 or uint64)."""

    agent: str
    masked: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class UnmaskRequest:
    """Round 3, server -> survivors: who survived (self-mask shares wanted) and who dropped."""

    survivors: list[str]
    dropped: list[str]


@dataclass(frozen=True)
class UnmaskResponse:
    """Round 3, agent -> server: shares of survivors' self-mask seeds and dropped agents' ``s`` keys.

    Both map the owner's agent id to the share value (66 bytes); the share's point is the
    responding agent's 1-based position in the sorted roster.
    """

    agent: str
    self_mask_shares: dict[str, bytes]
    key_shares: dict[str, bytes]
