"""The dealer service over the in-process twin of the wire: sealed halves, the bounded pool, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import zmq
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from medfl.smpc.dealer.material import Opener, PlanEntry, plan_to_wire, unpack_items
from medfl.smpc.session.provider import DealerService
from medfl.wire import ClientChannel, Envelope, MessageType, ServerChannel

PLAN = [PlanEntry("weight_mask", (6, 3)), PlanEntry("matmul_triple", (40,), 0), PlanEntry("trunc_pair", (40, 3), 16),
        PlanEntry("relu_keys", (120,), 64), PlanEntry("mul_triple", (5, 2))]


@pytest.fixture
def wire():
    ctx = zmq.Context()
    server = ServerChannel(bind="inproc://dealer", keys=None, context=ctx)
    client = ClientChannel(connect="inproc://dealer", keys=None, server_public_key=None, context=ctx)
    dealer_key = X25519PrivateKey.generate()
    service = DealerService(channel=server, secret_raw=dealer_key.private_bytes_raw(), pool=2, chunk_bytes=50_000)
    yield service, client, dealer_key
    client.close()
    server.close()
    ctx.term()


def _ask(service, client, dealer_key, session):
    parties = [X25519PrivateKey.generate(), X25519PrivateKey.generate()]
    client.send(Envelope(type=MessageType.DEALER_REQUEST, body={
        "session": session, "plan": plan_to_wire(PLAN),
        "party_keys": [p.public_key().public_bytes_raw() for p in parties]}))
    assert service.channel.poll(2000)
    service.step()
    openers = [Opener(party_secret=parties[p], dealer_public=dealer_key.public_key().public_bytes_raw(),
                      session=session, party=p) for p in (0, 1)]
    blobs: list[list[bytes]] = [[], []]
    pooled = set()
    while not (openers[0].done and openers[1].done):
        env = client.recv(2000)
        assert env is not None and env.type == MessageType.SMPC_MATERIAL
        p = env.body["party"]
        pooled.add(env.body["pooled"])
        blobs[p].append(openers[p].open(session=env.body["session"], seq=env.body["seq"], last=env.body["last"],
                                        ciphertext=bytes(env.tensors["c"])))
    return [unpack_items(b"".join(b)) for b in blobs], pooled


def test_halves_are_sealed_per_party_and_reconstruct_valid_triples(wire):
    service, client, dealer_key = wire
    (h0, h1), pooled = _ask(service, client, dealer_key, "s" * 16)
    assert pooled == {False} and [k for _, k, _ in h0] == [e.kind for e in PLAN]
    b = h0[0][2]["b"] + h1[0][2]["b"]
    a = h0[1][2]["a"] + h1[1][2]["a"]
    c = h0[1][2]["c"] + h1[1][2]["c"]
    assert np.array_equal(a @ b, c)  # C = A B mod 2^64 for the session's weight mask
    a, bb, cc = (h0[4][2][n] + h1[4][2][n] for n in "abc")
    assert np.array_equal(a * bb, cc)


def test_pool_is_bounded_and_serves_the_next_session(wire):
    service, client, dealer_key = wire
    assert not service.fill_one()  # no plan seen yet: nothing to pre-generate
    _ask(service, client, dealer_key, "s" * 16)
    assert service.fill_one() and service.fill_one() and not service.fill_one()
    assert service.pooled() == 2
    (h0, h1), pooled = _ask(service, client, dealer_key, "t" * 16)
    assert pooled == {True} and service.pooled() == 1
    b = h0[0][2]["b"] + h1[0][2]["b"]
    assert np.array_equal((h0[1][2]["a"] + h1[1][2]["a"]) @ b, h0[1][2]["c"] + h1[1][2]["c"])  # halves fit


def test_malformed_requests_are_answered_with_an_abort(wire):
    service, client, _ = wire
    client.send(Envelope(type=MessageType.DEALER_REQUEST, body={"session": "s" * 16, "plan": [{"k": "os.system"}],
                                                                "party_keys": [b"x" * 32, b"y" * 32]}))
    assert service.channel.poll(2000)
    service.step()
    env = client.recv(2000)
    assert env is not None and env.type == MessageType.SMPC_ABORT and env.body["code"] == "malformed"
    client.send(Envelope(type=MessageType.SMPC_SHARE, body={"session": "s" * 16}))
    assert service.channel.poll(2000)
    service.step()
    env = client.recv(2000)
    assert env is not None and env.type == MessageType.SMPC_ABORT and "only answers dealer_request" in \
        env.body["message"]


def test_pool_filling_yields_to_a_waiting_request(wire):
    service, client, dealer_key = wire
    _ask(service, client, dealer_key, "s" * 16)
    client.send(Envelope(type=MessageType.SMPC_ABORT, body={"session": "x" * 16}))  # anything waiting
    assert service.channel.poll(2000)
    assert not service.fill_one() and service.pooled() == 0  # the partial fill was dropped
    service.step()  # the waiting message is handled
    assert service.fill_one() and service.pooled() == 1
