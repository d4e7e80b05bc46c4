"""The coordinator side of a secure-aggregation round as an explicit state machine.

Stages: ``advertise -> share -> collect -> unmask -> done`` (or ``aborted``). Messages of the
open stage are accepted with ``receive_*``; the coordinator closes a stage when every expected
agent answered or the stage's deadline passed (``close_*``). Closing with fewer than the
threshold ``t`` of agents aborts the round with :class:`~medfl.errors.SecAggAbort`. The server
only relays the sealed shares; it learns the sum of the survivors' updates and nothing else.

References
----------
.. [1] Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
   CCS 2017, figure 4 (the server's side).
.. [2] Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from medfl import csprng
from medfl.buffers import VectorPool
from medfl.errors import OutOfOrder, Rejected, SecAggAbort, ShareError
from medfl.native import ring_add_
from medfl.secagg import shamir
from medfl.secagg.client import share_threshold
from medfl.secagg.graph import neighbourhoods
from medfl.secagg.keys import KeyPair, Scope, derive
from medfl.secagg.masking import NONCE_BYTES, MaskSeed, unmask_and_dequantize
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

__all__ = ["SecAggServer", "ServerStage"]


class ServerStage(StrEnum):
    """Stages of the coordinator's side of a round."""

    ADVERTISE = "advertise"
    SHARE = "share"
    COLLECT = "collect"
    UNMASK = "unmask"
    DONE = "done"
    ABORTED = "aborted"


_NEXT: dict[ServerStage, ServerStage] = {
    ServerStage.ADVERTISE: ServerStage.SHARE,
    ServerStage.SHARE: ServerStage.COLLECT,
    ServerStage.COLLECT: ServerStage.UNMASK,
    ServerStage.UNMASK: ServerStage.DONE,
}


@dataclass
class _State:
    stage: ServerStage = ServerStage.ADVERTISE
    keys: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    roster: KeyRoster | None = None
    graph: dict[str, frozenset[str]] = field(default_factory=dict)
    shares: dict[str, dict[str, bytes]] = field(default_factory=dict)
    sharers: list[str] = field(default_factory=list)
    total: np.ndarray | None = None
    uploaders: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    responses: dict[str, UnmaskResponse] = field(default_factory=dict)


class SecAggServer:
    """The coordinator's secure-aggregation state for one round.

    Parameters
    ----------
    agents : list of str
        Agents invited to the round.
    threshold : int
        Minimum number of agents that must survive every stage.
    degree : int
        SecAgg+ neighbourhood size; 0 for the complete graph (SecAgg).
    spec : QuantSpec
        Ring and fixed-point parameters every agent quantizes with.
    scope : Scope
        Job and round.
    pool : VectorPool, optional
        Where the ring sum's vector comes from, reused from round to round (see
        :mod:`medfl.buffers`). None: a fresh array.
    """

    def __init__(self, *, agents: list[str], threshold: int, degree: int, spec: QuantSpec, scope: Scope,
                 pool: VectorPool | None = None) -> None:
        if not 2 <= threshold <= len(agents):
            raise Rejected(f"threshold {threshold} must be between 2 and the {len(agents)} invited agents")
        self.agents, self.threshold, self.degree, self.spec, self.scope = sorted(agents), threshold, degree, spec, scope
        self.pool = pool
        self._st = _State()

    @property
    def stage(self) -> ServerStage:
        """The current stage."""
        return self._st.stage

    def _expect(self, stage: ServerStage, agent: str) -> None:
        if self._st.stage != stage:
            raise OutOfOrder(f"secagg round is at stage {self._st.stage}, not {stage} (message from {agent!r})")

    def _advance(self, stage: ServerStage, alive: int, what: str) -> None:
        self._expect(stage, "coordinator")
        if alive < self.threshold:
            self._st.stage = ServerStage.ABORTED
            raise SecAggAbort(f"round {self.scope.round} of job {self.scope.job!r}: only {alive} agent(s) {what}, "
                              f"below the threshold t={self.threshold}; the round is retried")
        self._st.stage = _NEXT[stage]

    def receive_keys(self, msg: AdvertiseKeys) -> None:
        """Round 0: record an agent's public keys."""
        self._expect(ServerStage.ADVERTISE, msg.agent)
        if msg.agent not in self.agents or msg.agent in self._st.keys:
            raise Rejected(f"keys from {msg.agent!r}: not invited or already advertised")
        self._st.keys[msg.agent] = (bytes(msg.c_public), bytes(msg.s_public))

    def close_advertise(self) -> KeyRoster:
        """End round 0; return the roster to send to every agent that advertised."""
        self._advance(ServerStage.ADVERTISE, len(self._st.keys), "advertised keys")
        st = self._st
        st.roster = KeyRoster(keys=dict(st.keys), graph_seed=csprng.token_bytes(32), degree=self.degree,
                              threshold=self.threshold, nonce=csprng.token_bytes(NONCE_BYTES))
        st.graph = neighbourhoods(list(st.keys), k=self.degree, seed=st.roster.graph_seed)
        return st.roster

    def receive_shares(self, msg: ShareKeys) -> None:
        """Round 1: record an agent's sealed shares (one per neighbour)."""
        self._expect(ServerStage.SHARE, msg.agent)
        st = self._st
        if msg.agent not in st.keys or msg.agent in st.shares:
            raise Rejected(f"shares from {msg.agent!r}: no keys advertised or already shared")
        if set(msg.sealed) != st.graph[msg.agent]:
            raise Rejected(f"shares from {msg.agent!r} are not addressed to exactly its neighbours")
        st.shares[msg.agent] = dict(msg.sealed)

    def close_sharing(self) -> dict[str, ShareDelivery]:
        """End round 1; return, for every agent that shared, the sealed shares addressed to it."""
        self._advance(ServerStage.SHARE, len(self._st.shares), "shared keys")
        st = self._st
        st.sharers = sorted(st.shares)
        return {a: ShareDelivery(sealed={s: st.shares[s][a] for s in st.sharers if a in st.shares[s]})
                for a in st.sharers}

    def receive_masked(self, msg: MaskedInput) -> None:
        """Round 2: add an agent's masked upload to the ring sum (the upload itself is not kept)."""
        self._expect(ServerStage.COLLECT, msg.agent)
        st = self._st
        if msg.agent not in st.shares or msg.agent in st.uploaders:
            raise Rejected(f"masked input from {msg.agent!r}: did not share keys or already uploaded")
        want = np.dtype(np.uint32 if self.spec.ring_bits == 32 else np.uint64)
        if msg.masked.dtype != want or msg.masked.ndim != 1 or (st.total is not None
                                                                  and msg.masked.shape != st.total.shape):
            raise Rejected(f"masked input from {msg.agent!r} has dtype {msg.masked.dtype} shape {msg.masked.shape}; "
                           f"expected a flat {want} vector of the round's length")
        if st.total is None:
            if self.pool is None:
                st.total = msg.masked.copy()
            else:
                st.total = self.pool.empty(msg.masked.size, want)
                np.copyto(st.total, msg.masked)
        else:
            ring_add_(st.total, msg.masked)
        st.uploaders.append(msg.agent)

    def close_collection(self) -> UnmaskRequest:
        """End round 2; return the request for the survivors' unmasking shares."""
        self._advance(ServerStage.COLLECT, len(self._st.uploaders), "uploaded masked inputs")
        st = self._st
        st.uploaders.sort()
        st.dropped = [a for a in st.sharers if a not in st.uploaders]
        return UnmaskRequest(survivors=list(st.uploaders), dropped=list(st.dropped))

    def receive_unmask(self, msg: UnmaskResponse) -> None:
        """Round 3: record a survivor's shares."""
        self._expect(ServerStage.UNMASK, msg.agent)
        if msg.agent not in self._st.uploaders or msg.agent in self._st.responses:
            raise Rejected(f"unmask shares from {msg.agent!r}: not a survivor or already answered")
        self._st.responses[msg.agent] = msg

    def _rebuild(self, owner: str, pick: str) -> bytes:
        st = self._st
        holders = sorted(st.graph[owner] | {owner})
        t = share_threshold(threshold=self.threshold, holders=len(holders), complete=len(holders) == len(st.keys))
        shares = []
        for a, r in st.responses.items():
            y = (r.self_mask_shares if pick == "b" else r.key_shares).get(owner)
            if y is not None and a in holders:
                shares.append(shamir.Share(x=holders.index(a) + 1, y=bytes(y)))
        try:
            return shamir.reconstruct(shares, t=t)
        except ShareError as exc:
            st.stage = ServerStage.ABORTED
            what = "self mask" if pick == "b" else "key"
            raise SecAggAbort(f"cannot rebuild the {what} of {owner!r}: {exc}") from exc

    def finish(self) -> np.ndarray:
        """End round 3: rebuild the masks to remove and return the float32 sum of the survivors' updates."""
        st = self._st
        self._expect(ServerStage.UNMASK, "coordinator")
        if st.total is None:
            raise OutOfOrder("no masked input was collected")
        if len(st.responses) < self.threshold:
            self._advance(ServerStage.UNMASK, len(st.responses), "answered the unmask request")
        if st.roster is None:
            raise OutOfOrder("the key roster was never sent")
        masks = [MaskSeed(seed=self._rebuild(u, "b"), sign=1) for u in st.uploaders]
        for v in st.dropped:
            s_v = KeyPair.from_secret(self._rebuild(v, "s"))
            if s_v.public != st.keys[v][1]:
                st.stage = ServerStage.ABORTED
                raise SecAggAbort(f"the rebuilt key of {v!r} does not match its advertised public key")
            for u in sorted(st.graph[v] & set(st.uploaders)):
                seed = derive(s_v.secret, st.keys[u][1], purpose="mask", scope=self.scope, ids=(u, v))
                masks.append(MaskSeed(seed=seed, sign=1 if u < v else -1))
        total, st.total = st.total, None  # unmasked in place: the masked sum is not kept
        out = unmask_and_dequantize(total, spec=self.spec, masks=masks, nonce=st.roster.nonce, copy=False)
        self._advance(ServerStage.UNMASK, len(st.responses), "answered the unmask request")
        return out
