"""Secure-aggregation envelopes from the attacker's side: malformed bodies, lying rosters, tiny sums."""

from __future__ import annotations

import numpy as np
import pytest

from agent.config import PolicySection
from agent.secure import SecureRound
from medfl.errors import MalformedMessage, OutOfOrder, PolicyViolation, Rejected
from medfl.secagg.envelopes import Session, decode, encode
from medfl.secagg.keys import KeyPair
from medfl.secagg.messages import AdvertiseKeys, KeyRoster, MaskedInput, UnmaskRequest, UnmaskResponse
from medfl.secagg.quantization import choose_spec
from medfl.wire import Envelope, MessageType
from medfl.wire.envelope import decode as wire_decode
from medfl.wire.envelope import encode as wire_encode

SESSION = Session(job="j", round=3, attempt=2, phase="fit")


def _params(**over):
    spec = choose_spec(n_agents=3, clip_norm=10.0)
    base = {"agent_id": "a", "phase": "fit", "attempt": 2, "threshold": 2, "degree": 0, "spec": spec.to_dict(),
            "length": 8, "clip_norm": 10.0, "sample_cap": 100}
    base.update(over)
    return base


def _over_the_wire(env: Envelope) -> Envelope:
    frames = [bytes(f) for f in wire_encode(env)]
    return wire_decode(frames, max_bytes=2**24)


def test_every_message_round_trips_through_the_wire():
    kp = KeyPair.generate()
    msgs = [AdvertiseKeys(agent="", c_public=kp.public, s_public=kp.public),
            KeyRoster(keys={"a": (kp.public, kp.public)}, graph_seed=bytes(32), degree=0, threshold=2,
                      nonce=bytes(12)),
            MaskedInput(agent="", masked=np.arange(5, dtype=np.uint32)),
            UnmaskRequest(survivors=["a", "b"], dropped=["c"]),
            UnmaskResponse(agent="", self_mask_shares={"a": b"x" * 66}, key_shares={"c": b"y" * 66})]
    for msg in msgs:
        env = _over_the_wire(encode(msg, SESSION))
        assert Session.of(env) == SESSION
        back = decode(env)
        if isinstance(msg, MaskedInput):
            assert np.array_equal(back.masked, msg.masked)  # type: ignore[union-attr]
        else:
            assert back == msg


def test_malformed_bodies_are_refused_with_a_typed_error():
    kp = KeyPair.generate()
    good = encode(AdvertiseKeys(agent="", c_public=kp.public, s_public=kp.public), SESSION)
    for body in ({**good.body, "c_public": b"short"}, {**good.body, "s_public": "text"},
                 {k: v for k, v in good.body.items() if k != "c_public"}):
        with pytest.raises(MalformedMessage):
            decode(Envelope(type=good.type, job="j", round=3, body=body))
    for body in ({**good.body, "phase": "train"}, {**good.body, "attempt": 0}, {**good.body, "attempt": True}):
        with pytest.raises(MalformedMessage):
            Session.of(Envelope(type=good.type, job="j", round=3, body=body))
    with pytest.raises(MalformedMessage, match="exactly one tensor"):
        decode(Envelope(type=MessageType.MASKED_INPUT, job="j", round=3, body=dict(good.body),
                        tensors={"masked": np.zeros(2, np.uint32), "extra": np.zeros(2, np.uint32)}))
    with pytest.raises(MalformedMessage):
        decode(Envelope(type=MessageType.SECAGG_UNMASK, job="j", round=3,
                        body={**good.body, "self_mask_shares": {"a": 5}, "key_shares": {}}))
    with pytest.raises(MalformedMessage):
        decode(Envelope(type=MessageType.TRAIN, job="j", round=3, body=dict(good.body)))


def test_agent_checks_what_the_coordinator_announces():
    with pytest.raises(MalformedMessage):
        SecureRound(job="j", round=3, params=_params(threshold="2"), policy=PolicySection())
    with pytest.raises(MalformedMessage, match="spec"):
        SecureRound(job="j", round=3, params=_params(spec={"ring_bits": 16, "frac_bits": 8, "clip_norm": 1.0,
                                                           "n_agents": 3}), policy=PolicySection())
    with pytest.raises(PolicyViolation, match="min_parties=3"):
        SecureRound(job="j", round=3, params=_params(threshold=2), policy=PolicySection(min_parties=3))
    run = SecureRound(job="j", round=3, params=_params(), policy=PolicySection())
    mine = decode(run.start())
    other = KeyPair.generate()
    # the roster lowers the threshold announced in TRAIN: refused
    lying = KeyRoster(keys={"a": (mine.c_public, mine.s_public), "b": (other.public, other.public)},
                      graph_seed=bytes(32), degree=0, threshold=1, nonce=bytes(12))
    with pytest.raises(Rejected, match="announced"):
        run.on_message(encode(lying, SESSION))
    # a message of another attempt is not this sum's
    with pytest.raises(OutOfOrder):
        run.on_message(encode(lying, Session(job="j", round=3, attempt=1, phase="fit")))
    with pytest.raises(Rejected, match="shape"):
        run.set_vector(np.zeros(7, np.float32))


def test_agent_reveals_no_share_for_a_sum_below_its_min_parties():
    run = SecureRound(job="j", round=3, params=_params(threshold=2), policy=PolicySection(min_parties=2))
    mine = decode(run.start())
    other = KeyPair.generate()
    roster = KeyRoster(keys={"a": (mine.c_public, mine.s_public), "b": (other.public, other.public)},
                       graph_seed=bytes(32), degree=0, threshold=2, nonce=bytes(12))
    run.on_message(encode(roster, SESSION))
    with pytest.raises(PolicyViolation, match="min_parties"):
        run.on_message(encode(UnmaskRequest(survivors=["a"], dropped=["b"]), SESSION))
