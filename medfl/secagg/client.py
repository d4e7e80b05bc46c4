"""The agent side of a secure-aggregation round as an explicit state machine.

Stages: ``new -> advertised -> shared -> masked -> done`` (or ``aborted``). Each stage is one
method taking the server's message and returning the agent's reply; the transition is checked
before any state changes, so an out-of-order message raises :class:`~medfl.errors.OutOfOrder`
and leaves the state as it was.

References
----------
.. [1] Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
   CCS 2017, figure 4 (the user's side).
.. [2] Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import msgpack
import numpy as np

from medfl import csprng
from medfl.buffers import VectorPool
from medfl.errors import OutOfOrder, Rejected
from medfl.native import ring_add_
from medfl.secagg import shamir
from medfl.secagg.graph import neighbourhoods
from medfl.secagg.keys import KeyPair, Scope, derive, open_sealed, seal
from medfl.secagg.masking import MaskSeed, apply_masks, quantize_and_mask
from medfl.secagg.messages import (
    AdvertiseKeys,
    KeyRoster,
    MaskedInput,
    ShareDelivery,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from medfl.secagg.quantization import QuantSpec

__all__ = ["ClientStage", "SecAggClient", "share_threshold"]


class ClientStage(StrEnum):
    """Stages of the agent's side of a round."""

    NEW = "new"
    ADVERTISED = "advertised"
    SHARED = "shared"
    MASKED = "masked"
    DONE = "done"
    ABORTED = "aborted"


_NEXT: dict[ClientStage, ClientStage] = {
    ClientStage.NEW: ClientStage.ADVERTISED,
    ClientStage.ADVERTISED: ClientStage.SHARED,
    ClientStage.SHARED: ClientStage.MASKED,
    ClientStage.MASKED: ClientStage.DONE,
}


def share_threshold(*, threshold: int, holders: int, complete: bool) -> int:
    """Return how many of an agent's ``holders`` (neighbours plus itself) must answer to rebuild its secrets.

    The complete graph uses the round threshold ``t`` (SecAgg); a SecAgg+ neighbourhood uses a
    majority of its holders, capped by ``t``.

    References
    ----------
    .. [1] Bell et al. 2020, section 3.2 (threshold within a neighbourhood).
    """
    return min(threshold, holders) if complete else min(threshold, holders // 2 + 1)


@dataclass
class _State:
    stage: ClientStage = ClientStage.NEW
    c: KeyPair | None = None
    s: KeyPair | None = None
    self_seed: bytes = b""
    roster: KeyRoster | None = None
    neighbours: frozenset[str] = frozenset()
    received: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)  # owner -> (s share, b share)
    own: tuple[bytes, bytes] = (b"", b"")
    sharers: frozenset[str] = frozenset()


class SecAggClient:
    """One agent's secure-aggregation state for one round.

    Parameters
    ----------
    agent : str
        This agent's id.
    scope : Scope
        Job and round.
    pool : VectorPool, optional
        Where the model-sized vectors (premask, upload) come from; reused from round to round
        (see :mod:`medfl.buffers`). None: fresh arrays.
    """

    def __init__(self, *, agent: str, scope: Scope, pool: VectorPool | None = None) -> None:
        self.agent = agent
        self.scope = scope
        self.pool = pool
        self._st = _State()

    @property
    def stage(self) -> ClientStage:
        """The current stage."""
        return self._st.stage

    def _enter(self, expected: ClientStage) -> None:
        if self._st.stage != expected:
            raise OutOfOrder(f"secagg client of {self.agent!r} is at stage {self._st.stage}, not {expected}")
        self._st.stage = _NEXT[expected]

    def advertise(self) -> AdvertiseKeys:
        """Round 0: draw the two key pairs and the self-mask seed; return the public keys."""
        self._enter(ClientStage.NEW)
        st = self._st
        st.c, st.s, st.self_seed = KeyPair.generate(), KeyPair.generate(), csprng.token_bytes(32)
        return AdvertiseKeys(agent=self.agent, c_public=st.c.public, s_public=st.s.public)

    def share(self, roster: KeyRoster) -> ShareKeys:
        """Round 1: Shamir-share ``s`` secret and self seed among the neighbours; seal each share."""
        st = self._st
        if st.stage != ClientStage.ADVERTISED or st.c is None or st.s is None:
            raise OutOfOrder(f"secagg client of {self.agent!r} is at stage {st.stage}, not advertised")
        if roster.keys.get(self.agent) != (st.c.public, st.s.public):
            raise Rejected(f"key roster does not carry {self.agent!r}'s advertised keys")
        if len(roster.keys) < roster.threshold:
            raise Rejected(f"only {len(roster.keys)} agents advertised keys, below threshold {roster.threshold}")
        if len(set(k[0] for k in roster.keys.values())) != len(roster.keys):
            raise Rejected("key roster repeats a public key")
        graph = neighbourhoods(list(roster.keys), k=roster.degree, seed=roster.graph_seed)
        self._enter(ClientStage.ADVERTISED)
        st.roster, st.neighbours = roster, graph[self.agent]
        holders = sorted(st.neighbours | {self.agent})
        t = share_threshold(threshold=roster.threshold, holders=len(holders), complete=len(holders) == len(roster.keys))
        s_shares = shamir.split(st.s.secret, n=len(holders), t=t)
        b_shares = shamir.split(st.self_seed, n=len(holders), t=t)
        sealed = {}
        for i, peer in enumerate(holders):
            if peer == self.agent:
                st.own = (s_shares[i].y, b_shares[i].y)
                continue
            key = derive(st.c.secret, roster.keys[peer][0], purpose="aead", scope=self.scope, ids=(self.agent, peer))
            body = msgpack.packb([self.agent, peer, s_shares[i].y, b_shares[i].y])
            sealed[peer] = seal(key, body, sender=self.agent, receiver=peer, scope=self.scope)
        return ShareKeys(agent=self.agent, sealed=sealed)

    def _open_delivery(self, delivery: ShareDelivery) -> tuple[dict[str, tuple[bytes, bytes]], list[MaskSeed], bytes]:
        """Open the shares sent to this agent; return them, its masks and the round's nonce (state only read)."""
        st = self._st
        if st.stage != ClientStage.SHARED or st.roster is None or st.c is None or st.s is None:
            raise OutOfOrder(f"secagg client of {self.agent!r} is at stage {st.stage}, not shared")
        received = {}
        for sender, blob in delivery.sealed.items():
            if sender not in st.neighbours:
                raise Rejected(f"share from {sender!r}, who is not a neighbour of {self.agent!r}")
            key = derive(st.c.secret, st.roster.keys[sender][0], purpose="aead", scope=self.scope,
                         ids=(self.agent, sender))
            owner, to, s_y, b_y = msgpack.unpackb(open_sealed(key, blob, sender=sender, receiver=self.agent,
                                                              scope=self.scope))
            if (owner, to) != (sender, self.agent):
                raise Rejected(f"share body names {owner!r} -> {to!r}, envelope says {sender!r} -> {self.agent!r}")
            received[sender] = (bytes(s_y), bytes(b_y))
        if len(received) + 1 < st.roster.threshold and len(st.neighbours) + 1 == len(st.roster.keys):
            raise Rejected(f"only {len(received) + 1} agents shared keys, below threshold {st.roster.threshold}")
        masks = [MaskSeed(seed=st.self_seed, sign=1)]
        for peer in sorted(received):
            seed = derive(st.s.secret, st.roster.keys[peer][1], purpose="mask", scope=self.scope,
                          ids=(self.agent, peer))
            masks.append(MaskSeed(seed=seed, sign=1 if self.agent < peer else -1))
        return received, masks, st.roster.nonce

    def premask(self, delivery: ShareDelivery, *, length: int, spec: QuantSpec) -> np.ndarray:
        """The sum of this agent's masks for ``delivery`` over a ``length`` ring vector, ahead of its update.

        The masks depend on the keys only, so an agent can build them while it trains and
        pass the result to :meth:`mask` (``premask=``): the upload is then one quantize and
        one ring add. The stage does not change; a bad delivery raises here as in :meth:`mask`.
        """
        _, masks, nonce = self._open_delivery(delivery)
        out = self.pool.zeros(length, spec.dtype) if self.pool is not None else np.zeros(length, dtype=spec.dtype)
        apply_masks(out, masks, nonce)
        return out

    def mask(self, delivery: ShareDelivery, *, update: np.ndarray, spec: QuantSpec,
             rounding_seed: int | None = None, premask: np.ndarray | None = None) -> MaskedInput:
        """Round 2: open the shares sent to this agent; quantize and mask ``update`` (clipped, weighted).

        ``rounding_seed`` (stochastic rounding) is drawn from :mod:`medfl.csprng` unless given.
        ``premask`` is :meth:`premask`'s result for the same delivery: the update is quantized
        and the premask added in the ring, which gives the same upload as masking in one pass.

        An ``update`` that is already a ring vector (a NumPy array of the spec's unsigned dtype:
        client-level DP encodes, rounds and noises the update itself,
        :func:`medfl.privacy.distributed_dp.encode_update`) is masked as it is, not quantized.
        """
        st = self._st
        received, masks, nonce = self._open_delivery(delivery)
        seed = csprng.seed64() if rounding_seed is None else rounding_seed
        out = None
        if self.pool is not None and isinstance(update, np.ndarray):
            out = self.pool.empty(update.size, spec.dtype)
        if isinstance(update, np.ndarray) and np.issubdtype(update.dtype, np.unsignedinteger):
            if update.dtype != np.dtype(spec.dtype) or update.ndim != 1:
                raise Rejected(f"ring vector of dtype {update.dtype} shape {update.shape} does not fit the round's "
                               f"{np.dtype(spec.dtype)} ring")
            masked = np.empty(update.size, dtype=spec.dtype) if out is None else out
            np.copyto(masked, update)
            if premask is None:
                apply_masks(masked, masks, nonce)
            else:
                if premask.dtype != np.dtype(spec.dtype) or premask.shape != (update.size,):
                    raise Rejected(f"premask of dtype {premask.dtype} shape {premask.shape} does not fit the ring "
                                   f"vector ({update.size} elements of {np.dtype(spec.dtype)})")
                ring_add_(masked, premask)
        elif premask is None:
            masked = quantize_and_mask(update, spec=spec, masks=masks, nonce=nonce, rounding_seed=seed, out=out)
        else:
            if (not isinstance(update, np.ndarray) or premask.dtype != np.dtype(spec.dtype)
                    or premask.shape != (update.size,)):
                raise Rejected(f"premask of dtype {premask.dtype} shape {premask.shape} does not fit the update "
                               f"({type(update).__name__} of {getattr(update, 'size', '?')} elements, ring "
                               f"{np.dtype(spec.dtype)}); a premask goes with a host (NumPy) update")
            masked = quantize_and_mask(update, spec=spec, masks=[], nonce=nonce, rounding_seed=seed, out=out)
            ring_add_(masked, premask)
        self._enter(ClientStage.SHARED)
        st.received, st.sharers = received, frozenset(received)
        return MaskedInput(agent=self.agent, masked=masked)

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Round 3: reveal self-mask shares of survivors and ``s`` shares of dropped agents, never both."""
        st = self._st
        if st.stage != ClientStage.MASKED or st.roster is None:
            raise OutOfOrder(f"secagg client of {self.agent!r} is at stage {st.stage}, not masked")
        survivors, dropped = set(request.survivors), set(request.dropped)
        if survivors & dropped:
            raise Rejected(f"agents {sorted(survivors & dropped)} are listed as both survivor and dropped")
        if self.agent not in survivors:
            raise Rejected(f"{self.agent!r} is not in the survivor list of its own unmask request")
        if len(survivors) < st.roster.threshold:
            raise Rejected(f"{len(survivors)} survivors, below threshold {st.roster.threshold}")
        self._enter(ClientStage.MASKED)
        held = dict(st.received)
        held[self.agent] = st.own
        return UnmaskResponse(
            agent=self.agent,
            self_mask_shares={a: held[a][1] for a in sorted(survivors) if a in held},
            key_shares={a: held[a][0] for a in sorted(dropped) if a in held},
        )
