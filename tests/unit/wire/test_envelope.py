"""The envelope: round trips, zero-copy decode, and nothing but WireError on hostile bytes."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from medfl.errors import MalformedMessage, MessageTooLarge, OutOfOrder, UnsupportedVersion, WireError
from medfl.wire import Envelope, MessageType, SequenceGuard, decode, encode

LIMIT = 1 << 24
DTYPES = ["float32", "float64", "int32", "int64", "uint8", "uint32", "uint64"]

_scalars = st.one_of(st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False), st.text(max_size=20), st.none(),
                    st.booleans())
bodies = st.dictionaries(st.text(max_size=10), _scalars, max_size=5)


@settings(max_examples=80, deadline=None)
@given(body=bodies, dtype=st.sampled_from(DTYPES),
       shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
       mtype=st.sampled_from(list(MessageType)), job=st.one_of(st.none(), st.text(max_size=12)),
       rnd=st.one_of(st.none(), st.integers(0, 10**6)))
def test_round_trip(body, dtype, shape, mtype, job, rnd):
    arr = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)
    env = Envelope(type=mtype, job=job, round=rnd, seq=42, body=body, tensors={"a": arr, "b": arr.T})
    out = decode(encode(env), max_bytes=LIMIT)
    assert (out.type, out.job, out.round, out.seq, dict(out.body)) == (mtype, job, rnd, 42, body)
    np.testing.assert_array_equal(out.tensors["a"], arr)
    np.testing.assert_array_equal(out.tensors["b"], arr.T)
    assert out.tensors["a"].dtype == arr.dtype


def test_decode_is_zero_copy_and_read_only():
    arr = np.arange(1000, dtype=np.float32)
    frames = encode(Envelope(type=MessageType.UPDATE, tensors={"w": arr}))
    payload = bytearray(frames[1])
    out = decode([frames[0], payload], max_bytes=LIMIT)
    assert np.shares_memory(out.tensors["w"], np.frombuffer(payload, np.uint8))
    assert not out.tensors["w"].flags.writeable


def test_encode_rejects_unsupported_dtypes():
    with pytest.raises(ValueError, match="dtype"):
        encode(Envelope(type=MessageType.UPDATE, tensors={"c": np.zeros(2, np.complex64)}))


def _header(**kw):
    h = {"v": 1, "type": "hello", "job": None, "round": None, "seq": 1, "body": {}, "tensors": []}
    h.update(kw)
    return msgpack.packb(h)


@pytest.mark.parametrize("frames,error", [
    ([], MalformedMessage),
    ([b"\xc1"], MalformedMessage),
    ([msgpack.packb([1, 2])], MalformedMessage),
    ([_header(v=2)], UnsupportedVersion),
    ([_header(v="1")], MalformedMessage),
    ([_header(type="launch_missiles")], MalformedMessage),
    ([_header(seq="x")], MalformedMessage),
    ([_header(tensors=[["w", "float32", [2]]])], MalformedMessage),
    ([_header(tensors=[["w", "float32", [3]]]), b"\x00" * 8], MalformedMessage),
    ([_header(tensors=[["w", "object", [1]]]), b"\x00" * 8], MalformedMessage),
    ([_header(tensors=[["w", "float32", [-1]]]), b""], MalformedMessage),
    ([_header(tensors=[["w", "uint8", [1]], ["w", "uint8", [1]]]), b"a", b"b"], MalformedMessage),
    ([_header(), b"x" * 100], MalformedMessage),
])
def test_hostile_headers(frames, error):
    with pytest.raises(error):
        decode(frames, max_bytes=LIMIT)


def test_too_large():
    frames = encode(Envelope(type=MessageType.UPDATE, tensors={"w": np.zeros(1000, np.float64)}))
    with pytest.raises(MessageTooLarge, match="limit of 4000 bytes"):
        decode(frames, max_bytes=4000)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), min_size=0, max_size=4))
def test_fuzz_random_frames_only_raise_wire_errors(frames):
    try:
        decode(frames, max_bytes=LIMIT)
    except WireError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.one_of(st.none(), st.integers(-2**63, 2**64 - 1), st.text(max_size=5), st.binary(max_size=5),
                                 st.floats()),
                    lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(st.text(max_size=4), c, max_size=4)),
                    max_leaves=20))
def test_fuzz_structured_headers(obj):
    try:
        decode([msgpack.packb(obj)], max_bytes=LIMIT)
    except WireError:
        pass


def test_sequence_guard():
    g = SequenceGuard()
    g.check(10)
    g.check(11)
    with pytest.raises(OutOfOrder, match="seq 11 after 11"):
        g.check(11)
    with pytest.raises(OutOfOrder):
        g.check(5)
    with pytest.raises(OutOfOrder):
        SequenceGuard().check(-1)
