"""The data owner against a malicious relay: tampered, replayed and foreign-session dealer chunks.

The data owner (:func:`medfl.smpc.session.client.infer_remote`, the code under test) talks to a test
peer playing a model server that asks a real dealer service for the session's material and
relays the data owner's sealed chunks after altering them. Both run over the in-process twin
of the wire; the data owner must abort with the right cause and tell the peer.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import zmq
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from medfl.errors import PolicyViolation, SessionAborted
from medfl.models import create_model
from medfl.smpc.dealer.material import plan_to_wire
from medfl.smpc.evaluator import Calibration
from medfl.smpc.session.client import infer_remote
from medfl.smpc.session.party import describe, trace_plan
from medfl.smpc.session.provider import DealerService
from medfl.wire import ClientChannel, Envelope, MessageType, ServerChannel

CAL = Calibration(8.0, ((1e-3, 50.0),) * 4)


class Relay:
    """A model server that relays the dealer's chunks for party 0 through ``alter``."""

    def __init__(self, ctx: zmq.Context, alter, *, announce_dealer: bytes | None = None):
        self.ctx, self.alter, self.announce_dealer = ctx, alter, announce_dealer
        self.front = ServerChannel(bind="inproc://ms", keys=None, context=ctx)
        dealer_sk = X25519PrivateKey.generate()
        self.dealer_pub = dealer_sk.public_key().public_bytes_raw()
        self.dealer = DealerService(channel=ServerChannel(bind="inproc://dealer", keys=None, context=ctx),
                                    secret_raw=dealer_sk.private_bytes_raw(), chunk_bytes=200_000)
        self.to_dealer = ClientChannel(connect="inproc://dealer", keys=None, server_public_key=None, context=ctx)
        self.abort: Envelope | None = None
        torch.manual_seed(0)  # test model weights only
        self.plan, _ = trace_plan(create_model("cnn", width=2).eval(), (1, 32, 32), CAL)

    def run(self) -> None:
        assert self.front.poll(10_000)
        req = self.front.recv()
        assert req is not None and req.envelope.type == MessageType.SMPC_REQUEST
        session = "sess" + "0" * 12
        self.front.send(req.peer, Envelope(type=MessageType.SMPC_QUEUED, body={"session": session, "position": 1}))
        self.front.send(req.peer, Envelope(type=MessageType.SMPC_ANNOUNCE, body={
            "session": session, "description": describe("cnn", {"width": 2}, (1, 32, 32), CAL, 16),
            "dealer_key": self.announce_dealer or self.dealer_pub, "images": 1}))
        own = X25519PrivateKey.generate()
        self.to_dealer.send(Envelope(type=MessageType.DEALER_REQUEST, body={
            "session": session, "plan": plan_to_wire(self.plan),
            "party_keys": [req.envelope.body["party_key"], own.public_key().public_bytes_raw()]}))
        assert self.dealer.channel.poll(10_000)
        self.dealer.step()
        chunks = []
        while True:
            env = self.to_dealer.recv(5000)
            assert env is not None
            if env.body["party"] == 0:
                chunks.append(env)
            if env.body["party"] == 1 and env.body["last"]:
                break
        for env in self.alter(chunks):
            self.front.send(req.peer, env)
        while self.front.poll(10_000):
            inc = self.front.recv()
            if inc is not None and inc.envelope.type == MessageType.SMPC_ABORT:
                self.abort = inc.envelope
                return

    def close(self) -> None:
        self.to_dealer.close()
        self.dealer.channel.close()
        self.front.close()


def _attack(alter, *, announce_dealer: bytes | None = None, trusted: bool = True) -> tuple[BaseException, Relay]:
    ctx = zmq.Context()
    relay = Relay(ctx, alter, announce_dealer=announce_dealer)
    t = threading.Thread(target=relay.run)
    t.start()
    client = ClientChannel(connect="inproc://ms", keys=None, server_public_key=None, context=ctx)
    try:
        with pytest.raises((SessionAborted, PolicyViolation)) as exc:
            infer_remote(channel=client, model="cnn", images=[np.zeros((1, 32, 32), np.float32)],
                         trusted_dealers={relay.dealer_pub} if trusted else None, timeout_s=5)
        t.join(30)
    finally:
        client.close()
        relay.close()
        ctx.term()
    return exc.value, relay


def _with(env: Envelope, **body) -> Envelope:
    return Envelope(type=env.type, body={**env.body, **body}, tensors=dict(env.tensors))


def test_tampered_chunk_aborts_with_auth_and_the_relay_is_told():
    def flip(chunks):
        c = chunks[1].tensors["c"].copy()
        c[100] ^= 0x01
        return [chunks[0], Envelope(type=chunks[1].type, body=dict(chunks[1].body), tensors={"c": c}), *chunks[2:]]

    exc, relay = _attack(flip)
    assert isinstance(exc, SessionAborted) and exc.code == "auth" and "failed authentication" in str(exc)
    assert relay.abort is not None and relay.abort.body["code"] == "auth"


def test_replayed_chunk_aborts_with_replay():
    exc, relay = _attack(lambda chunks: [chunks[0], chunks[0], *chunks[1:]])
    assert isinstance(exc, SessionAborted) and exc.code == "replay"
    assert relay.abort is not None and relay.abort.body["code"] == "replay"


def test_chunk_relabelled_for_another_session_aborts():
    exc, relay = _attack(lambda chunks: [_with(chunks[0], session="another-session-000"), *chunks[1:]])
    assert isinstance(exc, SessionAborted) and exc.code == "foreign_session" and "another-session" in str(exc)


def test_dropped_chunk_aborts():
    exc, _ = _attack(lambda chunks: [chunks[0], *chunks[2:]])
    assert isinstance(exc, SessionAborted) and exc.code == "replay" and "missing" in str(exc)


def test_substituted_dealer_is_refused_by_the_pinned_list():
    exc, relay = _attack(lambda chunks: chunks, announce_dealer=X25519PrivateKey.generate().public_key()
                         .public_bytes_raw())
    assert isinstance(exc, PolicyViolation) and "does not trust" in str(exc)
    assert relay.abort is not None and relay.abort.body["code"] == "policy"
