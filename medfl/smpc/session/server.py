"""The model server: holds a model, queues data owners' requests and runs each session as party 1.

It binds a CurveZMQ ROUTER (data owners connect out to it; only allow-listed keys get in) and
connects to the dealer with a pinned key. Per request it opens a session: it announces the
model by registry name, arguments, shapes and calibrated ranges (data, never code), asks the
dealer to fill the session's plan with the parties' ephemeral keys, relays the data owner's
sealed chunks without being able to read them, opens its own, then runs the online phase and
sends its share of the logits to the data owner. A party silent for ``timeout_s`` aborts the
session on this side and the other is told so (SMPC_ABORT). Requests arriving meanwhile are
queued and answered with their position.

References
----------
.. [1] Ryffel et al., "AriaNN", PoPETs 2022.
.. [2] ZeroMQ RFC 26/CURVEZMQ.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import pathlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from torch import nn

from medfl import csprng
from medfl.errors import SessionAborted
from medfl.smpc import ring
from medfl.smpc.dealer import Opener, PlanEntry, plan_to_wire, unpack_items
from medfl.smpc.evaluator import Calibration
from medfl.smpc.session.party import PartyRunner, ReplayDealer, describe, trace_plan
from medfl.smpc.session.plan_cache import read_plan, write_plan
from medfl.smpc.session.stages import SessionRecord, Stage
from medfl.wire.envelope import Envelope
from medfl.wire.keys import fingerprint
from medfl.wire.messages import MessageType
from medfl.wire.transport import ClientChannel, Incoming, ServerChannel

__all__ = ["ModelServer", "ServedModel"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """A model registered for encrypted inference, with its calibration and traced plan.

    Attributes
    ----------
    name : str
        Registry name announced to data owners (also the model id they request).
    kwargs : dict
        Registry arguments.
    model : nn.Module
        The weights (never leave the model server in the clear).
    in_shape : tuple of int
        (C, H, W).
    calibration : Calibration
        Ranges measured at registration.
    prep_plan, image_plan : list of PlanEntry
        Dealer items of the weight preparation and of one image.
    rounds_per_image : int
        Openings per image (plus one for the logits).
    """

    name: str
    kwargs: dict[str, Any]
    model: nn.Module
    in_shape: tuple[int, int, int]
    calibration: Calibration
    prep_plan: list[PlanEntry]
    image_plan: list[PlanEntry]
    rounds_per_image: int
    frac_bits: int = ring.FRAC_BITS

    @classmethod
    def register(cls, *, name: str, kwargs: dict[str, Any], model: nn.Module, in_shape: tuple[int, int, int],
                 calibration: Calibration, frac_bits: int = ring.FRAC_BITS,
                 cache: pathlib.Path | None = None) -> ServedModel:
        """Trace the plan of one session with one image and split it into preparation and per-image parts.

        The plan depends only on the announcement (architecture, shapes, calibrated ranges), so
        it is kept in ``cache`` under a digest of the announcement and reused
        (:mod:`medfl.smpc.session.plan_cache`).
        """
        model.eval()
        key = hashlib.sha256(json.dumps(describe(name, kwargs, in_shape, calibration, frac_bits),
                                        sort_keys=True).encode()).hexdigest()
        cached = read_plan(cache, key)
        if cached is not None:
            plan, prep_n, rounds = cached
        else:
            plan, total_rounds = trace_plan(model, in_shape, calibration, frac_bits)
            prep_n = sum(1 for e in plan if e.kind == "weight_mask")
            if any(e.kind == "weight_mask" for e in plan[prep_n:]):
                raise ValueError("weight masks must all come before the first image's items")
            rounds = total_rounds - prep_n
            write_plan(cache, key, plan, prep_n, rounds)
        return cls(name, dict(kwargs), model, in_shape, calibration, plan[:prep_n], plan[prep_n:], rounds, frac_bits)

    def plan_for(self, images: int) -> list[PlanEntry]:
        """The session's plan for ``images`` images (references re-based to the preparation)."""
        return list(self.prep_plan) + list(self.image_plan) * images

    def description(self) -> dict[str, Any]:
        """The announcement (data only)."""
        return describe(self.name, self.kwargs, self.in_shape, self.calibration, self.frac_bits)


@dataclass
class _Request:
    peer: bytes
    user_id: str
    party_key: bytes
    images: int
    record: SessionRecord
    queued_at: float = field(default_factory=time.monotonic)


class _ServerLink:
    """The model server's side of the link to one data owner; queues other peers' requests meanwhile."""

    def __init__(self, server: ModelServer, req: _Request):
        self.server, self.req = server, req

    def send(self, env: Envelope) -> None:
        if not self.server.channel.send(self.req.peer, env):
            raise SessionAborted(f"the data owner disappeared (unreachable); session {self.req.record.session} "
                                 "aborted", code="timeout")

    def recv(self, timeout_s: float) -> Envelope | None:
        deadline = time.monotonic() + timeout_s
        while True:
            self.server.tick()
            left = deadline - time.monotonic()
            if left <= 0 or not self.server.channel.poll(min(int(left * 1000) + 1, 200)):
                if time.monotonic() >= deadline:
                    return None
                continue
            inc = self.server.channel.recv()
            if inc is None:
                continue
            if inc.peer == self.req.peer:
                return inc.envelope
            self.server.handle_other(inc)


class ModelServer:
    """Serves encrypted inference of one model.

    Parameters
    ----------
    channel : ServerChannel
        Bound for data owners (CURVE with an allow-list).
    dealer : ClientChannel
        Connected to the dealer (its key pinned).
    dealer_public : bytes
        The dealer's raw X25519 public key (for opening this party's material and for the
        announcement, so data owners can check it against their pinned dealers).
    served : ServedModel
        The model.
    timeout_s : float
        Silence after which a session is aborted.
    max_images : int
        Images per session.
    on_change : callable, optional
        Called with the list of session records whenever one changes (status page).

    References
    ----------
    .. [1] Ryffel et al., "AriaNN", PoPETs 2022.
    """

    def __init__(self, *, channel: ServerChannel, dealer: ClientChannel, dealer_public: bytes, served: ServedModel,
                 timeout_s: float = 60.0, max_images: int = 16,
                 on_change: Callable[[list[dict[str, Any]]], None] | None = None, history: int = 50):
        self.channel, self.dealer, self.dealer_public, self.served = channel, dealer, dealer_public, served
        self.timeout_s, self.max_images, self.on_change = timeout_s, max_images, on_change
        self.queue: collections.deque[_Request] = collections.deque()
        self.sessions: collections.deque[SessionRecord] = collections.deque(maxlen=history)
        self.dealer_fp = fingerprint(zmq.utils.z85.encode(dealer_public))
        self._last_tick = 0.0
        self._stop = threading.Event()

    # -- status -------------------------------------------------------------------------------
    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change([r.to_dict() for r in self.sessions])

    # -- requests -----------------------------------------------------------------------------
    QUEUE_TICK_S = 2.0

    def tick(self) -> None:
        """Every QUEUE_TICK_S, tell each queued data owner its position (they know the server is alive).

        Called from every wait of a running session, so a shutdown aborts the session at once
        (the data owner is told; no result was released, nothing is lost but the session).
        """
        if self._stop.is_set():
            raise SessionAborted("the model server is shutting down; ask again when it is back", code="shutdown")
        now = time.monotonic()
        if now - self._last_tick < self.QUEUE_TICK_S:
            return
        self._last_tick = now
        for pos, req in enumerate(self.queue, start=1):
            self.channel.send(req.peer, Envelope(type=MessageType.SMPC_QUEUED,
                                                 body={"session": req.record.session, "position": pos}))

    def handle_other(self, inc: Incoming) -> None:
        """A message that is not part of the running session: queue a request, refuse the rest."""
        env = inc.envelope
        if env.type != MessageType.SMPC_REQUEST:
            if env.type not in (MessageType.SMPC_ABORT, MessageType.SMPC_DONE):
                self._refuse(inc, str(env.body.get("session", "")), "rejected",
                             f"no session of yours is running; got {env.type}")
            return
        model, images, key = env.body.get("model"), env.body.get("images"), env.body.get("party_key")
        if model != self.served.name:
            self._refuse(inc, "", "not_found", f"this model server serves {self.served.name!r}, not {model!r}")
            return
        if not isinstance(images, int) or not 1 <= images <= self.max_images:
            self._refuse(inc, "", "rejected", f"images must be 1..{self.max_images}, got {images!r}")
            return
        if not isinstance(key, bytes) or len(key) != 32:
            self._refuse(inc, "", "malformed", "party_key must be a raw 32-byte X25519 public key")
            return
        rec = SessionRecord(session=csprng.token_bytes(12).hex(), model=self.served.name,
                            agent=inc.user_id or inc.peer.hex()[:16], dealer=self.dealer_fp, images=images)
        self.queue.append(_Request(inc.peer, inc.user_id, key, images, rec))
        self.sessions.append(rec)
        self.channel.send(inc.peer, Envelope(type=MessageType.SMPC_QUEUED,
                                             body={"session": rec.session, "position": len(self.queue)}))
        log.info("session %s queued for %s (%d image(s), position %d)", rec.session, rec.agent, images,
                 len(self.queue))
        self._changed()

    def _refuse(self, inc: Incoming, session: str, code: str, message: str) -> None:
        log.warning("refused %s: %s", inc.user_id or inc.peer.hex()[:16], message)
        self.channel.send(inc.peer, Envelope(type=MessageType.SMPC_ABORT,
                                             body={"session": session, "code": code, "message": message}))

    # -- loop ---------------------------------------------------------------------------------
    def serve(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set; a running session is aborted then, queued ones are told."""
        self._stop = stop
        try:
            while not stop.is_set():
                self.step(200)
        finally:
            self._abort_queued()

    def _abort_queued(self) -> None:
        while self.queue:
            req = self.queue.popleft()
            self.channel.send(req.peer, Envelope(type=MessageType.SMPC_ABORT, body={
                "session": req.record.session, "code": "shutdown",
                "message": "the model server is shutting down; ask again when it is back"}))
            req.record.move(Stage.ABORTED, "shutdown: the model server stopped before the session ran")
        self._changed()

    def step(self, timeout_ms: int) -> None:
        """Run the next queued session, or wait up to ``timeout_ms`` for a request."""
        if self.queue:
            self.run(self.queue.popleft())
            return
        if self.channel.poll(timeout_ms):
            inc = self.channel.recv()
            if inc is not None:
                self.handle_other(inc)

    def run(self, req: _Request) -> None:
        """Run one session to its end (closed or aborted); never raises on a party's failure."""
        rec = req.record
        link = _ServerLink(self, req)
        try:
            runner = self._offline(req, link)
            rec.move(Stage.ONLINE)
            self._changed()
            t0 = time.perf_counter()
            for _ in range(req.images):
                runner.infer(None)
            rec.online_seconds = time.perf_counter() - t0
            runner.dealer.check_used_up()
            env = link.recv(self.timeout_s)
            if env is None or env.type != MessageType.SMPC_DONE:
                raise SessionAborted(f"no close from the data owner within {self.timeout_s:g} s", code="timeout")
            rec.bytes_sent, rec.rounds = runner.channel.bytes_sent, runner.channel.rounds
            rec.move(Stage.CLOSED, "closed by the data owner")
            log.info("session %s closed: %d image(s), %.2f s online", rec.session, req.images, rec.online_seconds)
        except SessionAborted as exc:
            log.warning("session %s aborted (%s): %s", rec.session, exc.code, exc)
            self.dealer.send(Envelope(type=MessageType.SMPC_ABORT, body={"session": rec.session, "code": exc.code,
                                                                         "message": "session aborted"}))
            if exc.code != "peer":
                self.channel.send(req.peer, Envelope(type=MessageType.SMPC_ABORT, body={
                    "session": rec.session, "code": exc.code, "message": str(exc)}))
            rec.move(Stage.ABORTED, f"{exc.code}: {exc}")
        self._changed()

    def _offline(self, req: _Request, link: _ServerLink) -> PartyRunner:
        rec = req.record
        t0 = time.perf_counter()
        rec.move(Stage.OFFLINE)
        self._changed()
        own = X25519PrivateKey.generate()
        plan = self.served.plan_for(req.images)
        link.send(Envelope(type=MessageType.SMPC_ANNOUNCE, job=rec.session, body={
            "session": rec.session, "description": self.served.description(), "images": req.images,
            "dealer_key": self.dealer_public, "items": len(plan)}))
        if not self.dealer.send(Envelope(type=MessageType.DEALER_REQUEST, job=rec.session, body={
                "session": rec.session, "plan": plan_to_wire(plan),
                "party_keys": [req.party_key, own.public_key().public_bytes_raw()]})):
            raise SessionAborted("the dealer is unreachable", code="timeout")
        opener = Opener(party_secret=own, dealer_public=self.dealer_public, session=rec.session, party=1)
        stream = bytearray()  # grown chunk by chunk: peak memory is the material once, not twice
        relayed_last = False
        deadline = time.monotonic() + self.timeout_s
        while not (opener.done and relayed_last):
            if time.monotonic() > deadline:
                raise SessionAborted(f"no dealer material within {self.timeout_s:g} s", code="timeout")
            self.tick()
            env = self.dealer.recv(100)
            if env is None:
                if self.channel.poll(0):  # the data owner may abort meanwhile; others are queued
                    inc = self.channel.recv()
                    if inc is not None and inc.peer == req.peer and inc.envelope.type == MessageType.SMPC_ABORT:
                        raise SessionAborted(f"the data owner aborted: {inc.envelope.body.get('message')}",
                                             code="peer")
                    if inc is not None and inc.peer != req.peer:
                        self.handle_other(inc)
                continue
            if env.body.get("session") != rec.session:
                log.debug("dropped dealer message of another session %s", str(env.body.get("session"))[:40])
                continue
            if env.type == MessageType.SMPC_ABORT:
                raise SessionAborted(f"the dealer refused: {env.body.get('message')}", code="dealer")
            deadline = time.monotonic() + self.timeout_s
            party = env.body.get("party")
            if party == 0:
                link.send(Envelope(type=MessageType.SMPC_MATERIAL, job=rec.session, body=dict(env.body),
                                   tensors=dict(env.tensors)))
                relayed_last = bool(env.body.get("last"))
            elif party == 1:
                stream += opener.open_message(env.body, env.tensors)
        items = unpack_items(stream)
        rec.offline_seconds = time.perf_counter() - t0
        channel_timeout = self.timeout_s
        return PartyRunner(party=1, model=self.served.model, in_shape=self.served.in_shape,
                           calibration=self.served.calibration, dealer=ReplayDealer(1, items), session=rec.session,
                           link=link, timeout_s=channel_timeout, frac_bits=self.served.frac_bits)
