"""The crypto provider (dealer) as a service: fills session plans and seals each half to its party.

The dealer binds a CurveZMQ ROUTER that admits only the model servers it was told to trust.
A DEALER_REQUEST carries a session id, a plan (kinds and shapes, never data) and the two
parties' ephemeral X25519 keys; the dealer answers with SMPC_MATERIAL chunks, each sealed to
one party (:class:`~medfl.smpc.dealer.material.Sealer`), so the model server relaying the data
owner's chunks cannot read them. With ``pool > 0`` it keeps up to that many sessions of
material for the last plan it served, generated while idle (a bounded store, never more).
With ``device="cuda"`` the material is generated in bulk on a GPU (:mod:`medfl.smpc.dealer.generator`).

References
----------
.. [1] Beaver, "Efficient Multiparty Protocols Using Circuit Randomization", CRYPTO 1991
   (a trusted dealer of correlated randomness).
.. [2] Ryffel et al., "AriaNN", PoPETs 2022 (the crypto provider of FSS-based inference).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import msgpack
import numpy as np

from medfl.errors import MalformedMessage
from medfl.smpc.dealer import LocalDealer, PlanEntry, Sealer, generate, pack_items, plan_from_wire, plan_to_wire
from medfl.smpc.device import resolve_device
from medfl.wire.envelope import Envelope
from medfl.wire.messages import MessageType
from medfl.wire.transport import Incoming, ServerChannel

__all__ = ["DealerService", "Material", "make_material", "seal_chunks"]

log = logging.getLogger(__name__)

_Items = list[tuple[int, str, dict[str, np.ndarray]]]


@dataclass
class Material:
    """Both halves of one session's material, unsealed (held only inside the dealer)."""

    halves: tuple[_Items, _Items]
    seconds: float
    nbytes: int = field(default=0)


def make_material(plan: list[PlanEntry], *, device: str | None = None) -> Material:
    """Generate a plan's items with fresh CSPRNG randomness (:class:`LocalDealer` on ``device``)."""
    t0 = time.perf_counter()
    h0: _Items = []
    h1: _Items = []
    for i, kind, a0, a1 in generate(plan, LocalDealer(device=device)):
        h0.append((i, kind, a0))
        h1.append((i, kind, a1))
    n = sum(a.nbytes for _, _, arrs in h0 + h1 for a in arrs.values())
    return Material((h0, h1), time.perf_counter() - t0, n)


def seal_chunks(items: _Items, sealer: Sealer, chunk_bytes: int) -> list[tuple[int, bool, bytes]]:
    """Pack one half and cut it into sealed chunks of at most ``chunk_bytes``: (seq, last, ciphertext)."""
    blob = pack_items(items)
    view = memoryview(blob)
    starts = list(range(0, max(len(blob), 1), chunk_bytes))
    out = []
    for j, s in enumerate(starts):
        last = j == len(starts) - 1
        seq, ct = sealer.seal(bytes(view[s:s + chunk_bytes]), last=last)
        out.append((seq, last, ct))
    return out


def _digest(plan: list[PlanEntry]) -> str:
    return hashlib.sha256(msgpack.packb(plan_to_wire(plan))).hexdigest()


class DealerService:
    """Serves DEALER_REQUESTs on a CurveZMQ ROUTER.

    Parameters
    ----------
    channel : ServerChannel
        Bound with the dealer's key and an allow-list of model servers.
    secret_raw : bytes
        The dealer's X25519 secret (its CURVE secret key, 32 raw bytes).
    pool : int
        Sessions of material to keep ready for the last plan (0: generate on request).
    chunk_bytes : int
        Plaintext bytes per sealed chunk.
    device : {"cpu", "cuda"}, optional
        Where the material is generated (:mod:`medfl.smpc.dealer.generator`); by default where
        ``MEDFL_SMPC_DEVICE`` says, else the host.

    References
    ----------
    .. [1] Ryffel et al., "AriaNN", PoPETs 2022.
    """

    def __init__(self, *, channel: ServerChannel, secret_raw: bytes, pool: int = 0, chunk_bytes: int = 8 << 20,
                 device: str | None = None):
        if pool < 0:
            raise ValueError(f"pool must be >= 0, got {pool}")
        self.channel, self.pool_size, self.chunk_bytes = channel, pool, chunk_bytes
        self.device = resolve_device(device)
        self._secret = secret_raw
        self._pool: dict[str, deque[Material]] = {}
        self._last_plan: list[PlanEntry] | None = None
        self.served = 0
        self._backlog: deque[Incoming] = deque()
        self._stop = threading.Event()

    def pooled(self) -> int:
        """Sessions of material ready now."""
        return sum(len(q) for q in self._pool.values())

    def fill_one(self) -> bool:
        """Generate one session of pooled material for the last plan, if below the bound."""
        if self.pool_size == 0 or self._last_plan is None:
            return False
        key = _digest(self._last_plan)
        q = self._pool.setdefault(key, deque())
        if len(q) >= self.pool_size:
            return False
        t0 = time.perf_counter()
        h0: _Items = []
        h1: _Items = []
        for i, kind, a0, a1 in generate(self._last_plan, LocalDealer(device=self.device)):
            if self._backlog or self.channel.poll(0) or self._stop.is_set():  # serve a request first, drop this fill
                return False
            h0.append((i, kind, a0))
            h1.append((i, kind, a1))
        q.append(Material((h0, h1), time.perf_counter() - t0))
        log.info("dealer pool: %d session(s) ready", len(q))
        return True

    def serve(self, stop: threading.Event) -> None:
        """Answer requests until ``stop`` is set; fill the pool while idle.

        A session being streamed when ``stop`` is set is abandoned and its model server told
        (SMPC_ABORT, code ``shutdown``): material is never kept, so nothing is lost but the session.
        """
        self._stop = stop
        while not stop.is_set():
            if self._backlog or self.channel.poll(200):
                self.step()
            else:
                self.fill_one()

    def step(self) -> None:
        """Handle one incoming message (never raises on bad input)."""
        inc = self._backlog.popleft() if self._backlog else self.channel.recv()
        if inc is None:
            return
        env = inc.envelope
        if env.type != MessageType.DEALER_REQUEST:
            if env.type != MessageType.SMPC_ABORT:
                self._abort(inc, str(env.body.get("session", "")), "rejected",
                            f"the dealer only answers dealer_request, got {env.type}")
            return
        session = env.body.get("session")
        try:
            if not isinstance(session, str) or not 8 <= len(session) <= 64:
                raise MalformedMessage("session must be a string of 8 to 64 characters")
            plan = plan_from_wire(env.body.get("plan"))
            keys = env.body.get("party_keys")
            if not (isinstance(keys, list) and len(keys) == 2 and all(isinstance(k, bytes) and len(k) == 32
                                                                      for k in keys)):
                raise MalformedMessage("party_keys must be two raw 32-byte X25519 public keys")
        except MalformedMessage as exc:
            self._abort(inc, str(session), "malformed", str(exc))
            return
        self._serve(inc, session, plan, keys)

    def _items(self, plan: list[PlanEntry]) -> tuple[Iterator[tuple[int, str, dict, dict]], bool]:
        q = self._pool.get(_digest(plan))
        if q:
            mat = q.popleft()
            return ((i, k, a0, a1) for (i, k, a0), (_, _, a1) in zip(*mat.halves, strict=True)), True
        return generate(plan, LocalDealer(device=self.device)), False

    def _serve(self, inc: Incoming, session: str, plan: list[PlanEntry], keys: list[bytes]) -> None:
        """Stream the session's material: items are generated, packed and sealed chunk by chunk."""
        t0 = time.perf_counter()
        items, pooled = self._items(plan)
        self._last_plan = plan
        sealers = [Sealer(dealer_secret=self._secret, party_public=keys[p], session=session, party=p) for p in (0, 1)]
        buffers = [bytearray(), bytearray()]
        sent = [0, 0]  # sealed bytes per party

        def flush(party: int, last: bool) -> bool:
            """Seal and send the first chunk_bytes of the party's stream (all of it when last)."""
            buf = buffers[party]
            n = len(buf) if last else self.chunk_bytes
            seq, ct = sealers[party].seal(bytes(buf[:n]), last=last)
            del buf[:n]
            sent[party] += len(ct)
            return self.channel.send(inc.peer, Envelope(
                type=MessageType.SMPC_MATERIAL, job=session,
                body={"session": session, "party": party, "seq": seq, "last": last, "pooled": pooled},
                tensors={"c": np.frombuffer(ct, np.uint8)}))

        for i, kind, a0, a1 in items:
            for party, arrays in ((0, a0), (1, a1)):
                buffers[party] += pack_items([(i, kind, arrays)])
                while len(buffers[party]) >= self.chunk_bytes:  # records may span chunks: the stream is cut
                    if not flush(party, False):
                        log.warning("session %s: model server gone while sending material", session)
                        return
            if self._cancelled(session):
                log.info("session %s cancelled by the model server; material stopped", session)
                return
            if self._stop.is_set():
                self._abort(inc, session, "shutdown", "the dealer is shutting down; ask again when it is back")
                return
        if not (flush(0, True) and flush(1, True)):
            log.warning("session %s: model server gone while sending material", session)
            return
        self.served += 1
        # each party receives only its own half: a data owner's "MB offline" is party 0's figure
        log.info("session %s: %d items, %.1f MB sealed for both parties (party 0, the data owner: %.1f MB; "
                 "party 1, the model server: %.1f MB) via %s (%s, %.2f s)", session, len(plan), sum(sent) / 1e6,
                 sent[0] / 1e6, sent[1] / 1e6, inc.user_id or "model server",
                 "pooled" if pooled else "generated on request", time.perf_counter() - t0)

    def _cancelled(self, session: str) -> bool:
        """True if an SMPC_ABORT for ``session`` is waiting (other messages wait for the loop)."""
        while self.channel.poll(0):
            inc = self.channel.recv()
            if inc is None:
                continue
            if inc.envelope.type == MessageType.SMPC_ABORT and inc.envelope.body.get("session") == session:
                return True
            self._backlog.append(inc)
        return False

    def _abort(self, inc: Incoming, session: str, code: str, message: str) -> None:
        log.warning("dealer refused a request from %s: %s", inc.user_id or inc.peer.hex()[:16], message)
        self.channel.send(inc.peer, Envelope(type=MessageType.SMPC_ABORT,
                                             body={"session": session, "code": code, "message": message}))
