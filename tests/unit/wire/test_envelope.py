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
from medfl.wire.envelope import FRAME_BYTES

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
    ([_header(v=3)], UnsupportedVersion),
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


@pytest.mark.parametrize("header", [
    {"body": {"t": msgpack.Timestamp(1)}},
    {"body": {"x": msgpack.ExtType(3, b"x")}},
    {"body": {b"bytes-key": 1}},
    {"body": {"deep": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}},
    {"tensors": [["w", "float64", [0, 2**39, 2**39, 2**39, 2**39]]]},
    {"tensors": [["w", "float32", [True]]]},
    {"tensors": [["w", "float32"]]},
    {"round": "one"},
    {"job": 5},
    {"body": []},
])
def test_hostile_header_fields(header):
    frames = [_header(**header)] + [b""] * len(header.get("tensors", []))
    with pytest.raises(MalformedMessage):
        decode(frames, max_bytes=LIMIT)


def test_non_buffer_frames_and_frame_floods_are_malformed():
    with pytest.raises(MalformedMessage, match="not a byte buffer"):
        decode([_header(), "text"], max_bytes=LIMIT)
    with pytest.raises(MalformedMessage, match="frames"):
        decode([_header()] + [b""] * 100_000, max_bytes=LIMIT)


def test_unknown_version_says_which_are_spoken():
    with pytest.raises(UnsupportedVersion, match=r"version 3 .*supported: \[1, 2\]"):
        decode([_header(v=3)], max_bytes=LIMIT)


def test_extra_header_fields_are_ignored():
    """Compatibility: a newer peer may add optional fields."""
    out = decode([_header(trace_id="abc", seq=7)], max_bytes=LIMIT)
    assert out.seq == 7 and out.type == MessageType.HELLO


def test_encode_is_zero_copy_for_contiguous_arrays():
    arr = np.arange(4096, dtype=np.int64)
    frames = encode(Envelope(type=MessageType.UPDATE, tensors={"w": arr}))
    assert np.shares_memory(np.frombuffer(frames[1], np.uint8), arr)


def test_non_contiguous_and_big_endian_arrays_round_trip():
    base = np.arange(60, dtype=">f8").reshape(3, 4, 5)
    view = base[:, ::2, 1:]
    out = decode(encode(Envelope(type=MessageType.TRAIN, tensors={"v": view, "b": base})), max_bytes=LIMIT)
    np.testing.assert_array_equal(out.tensors["v"], view)
    np.testing.assert_array_equal(out.tensors["b"], base)
    assert out.tensors["b"].dtype == np.dtype("<f8")


def test_tensor_order_is_kept():
    names = [f"layer{i}" for i in (3, 1, 2, 0)]
    env = Envelope(type=MessageType.TRAIN, tensors={n: np.zeros(1, np.uint8) for n in names})
    assert list(decode(encode(env), max_bytes=LIMIT).tensors) == names


_specs = st.lists(st.tuples(st.text(max_size=3), st.sampled_from(DTYPES + ["float16", "object", ""]),
                            st.lists(st.integers(-2, 2**41), max_size=9)), max_size=4)


@settings(max_examples=300, deadline=None)
@given(specs=_specs, payloads=st.lists(st.binary(max_size=64), max_size=5), v=st.sampled_from([1, 1, 1, 0, 2]))
def test_fuzz_tensor_specs_only_raise_wire_errors(specs, payloads, v):
    header = _header(v=v, tensors=[list(s) for s in specs])
    try:
        out = decode([header, *payloads], max_bytes=LIMIT)
    except WireError:
        return
    for arr in out.tensors.values():
        assert not arr.flags.writeable


# ---- tensors larger than FRAME_BYTES travel in parts (protocol version 2) ----------------------
BIG_LIMIT = 4 * FRAME_BYTES


def test_a_big_tensor_travels_in_parts_without_copy_and_comes_back_whole():
    big = np.arange((2 * FRAME_BYTES + 12) // 4, dtype=np.float32).reshape(-1, 1)  # two full parts and a short one
    small = np.arange(5, dtype=np.int64)
    frames = encode(Envelope(type=MessageType.MASKED_INPUT, tensors={"a": small, "big": big, "z": small}))
    assert [memoryview(f).nbytes for f in frames[1:]] == [40, FRAME_BYTES, FRAME_BYTES, 12, 40]
    for part in frames[2:5]:
        assert np.shares_memory(np.frombuffer(part, np.uint8), big)  # zero-copy on the way out
    assert msgpack.unpackb(frames[0])["tensors"][1] == ["big", "float32", [big.shape[0], 1], 3]
    out = decode([bytes(f) for f in frames], max_bytes=BIG_LIMIT)
    assert list(out.tensors) == ["a", "big", "z"] and out.version == 2
    np.testing.assert_array_equal(out.tensors["big"], big)
    np.testing.assert_array_equal(out.tensors["z"], small)
    assert not out.tensors["big"].flags.writeable and out.tensors["big"].dtype == np.dtype("<f4")


def test_joined_tensors_reuse_memory_only_once_the_last_one_is_dropped():
    def message(fill: int) -> list[bytes]:
        big = np.full((FRAME_BYTES + 8) // 4, fill, dtype=np.uint32)
        return [bytes(f) for f in encode(Envelope(type=MessageType.MASKED_INPUT, tensors={"m": big}))]

    def addr(a: np.ndarray) -> int:
        return int(a.__array_interface__["data"][0])

    first = decode(message(1), max_bytes=BIG_LIMIT).tensors["m"]
    second = decode(message(2), max_bytes=BIG_LIMIT).tensors["m"]  # first still held: other memory
    assert addr(first) != addr(second) and np.all(first == 1) and np.all(second == 2)
    where = addr(first)
    del first
    third = decode(message(3), max_bytes=BIG_LIMIT).tensors["m"]
    assert addr(third) == where and np.all(third == 3) and np.all(second == 2)
    assert not third.flags.writeable  # read-only as every received tensor


@pytest.mark.parametrize("nbytes,parts", [(FRAME_BYTES, 1), (FRAME_BYTES + 1, 2), (2 * FRAME_BYTES, 2)])
def test_parts_boundaries(nbytes, parts):
    arr = np.frombuffer(np.random.default_rng(nbytes).bytes(nbytes), np.uint8)
    frames = encode(Envelope(type=MessageType.UPDATE, tensors={"w": arr}))
    assert len(frames) == 1 + parts
    np.testing.assert_array_equal(decode(frames, max_bytes=BIG_LIMIT).tensors["w"], arr)


def test_a_version_1_envelope_keeps_one_frame_per_tensor_and_still_decodes():
    arr = np.zeros(FRAME_BYTES + 8, np.uint8)
    frames = encode(Envelope(type=MessageType.UPDATE, tensors={"w": arr}, version=1))
    assert len(frames) == 2 and msgpack.unpackb(frames[0])["v"] == 1
    out = decode(frames, max_bytes=BIG_LIMIT)
    assert out.version == 1 and out.tensors["w"].size == arr.size


def _split_header(parts, v=2, shape=(8,)):
    return _header(v=v, type="update", tensors=[["w", "uint8", list(shape), parts]])


@pytest.mark.parametrize("frames,match", [
    ([_split_header(2, v=1), b"a" * 4, b"b" * 4], "must be \\[name, dtype, shape\\]$"),  # parts need version 2
    ([_split_header(1), b"a" * 8], "parts must be"),
    ([_split_header(0)], "parts must be"),
    ([_split_header(True), b"a" * 8], "parts must be"),
    ([_split_header("2"), b"a" * 4, b"b" * 4], "parts must be"),
    ([_split_header(-3)], "parts must be"),
    ([_split_header(2**20)], "parts must be"),
    ([_split_header(2), b"a" * 4], "frames follow"),
    ([_split_header(2), b"a" * 4, b"b" * 4, b"c"], "frames follow"),
    ([_split_header(2), b"a" * 4, b"b" * 5], "hold 9"),
    ([_split_header(2), b"a" * 8, b""], "empty part"),
    ([_split_header(3), b"a" * 4, b"", b"b" * 4], "empty part"),
])
def test_hostile_parts_are_malformed(frames, match):
    with pytest.raises(MalformedMessage, match=match):
        decode(frames, max_bytes=BIG_LIMIT)


@settings(max_examples=200, deadline=None)
@given(parts=st.one_of(st.integers(-3, 6), st.booleans(), st.text(max_size=2), st.none()),
       sizes=st.lists(st.integers(0, 9), max_size=6), shape=st.lists(st.integers(-1, 12), max_size=3))
def test_fuzz_parts_only_raise_wire_errors(parts, sizes, shape):
    frames = [_split_header(parts, shape=shape), *[b"x" * n for n in sizes]]
    try:
        out = decode(frames, max_bytes=BIG_LIMIT)
    except WireError:
        return
    assert sum(sizes) == out.tensors["w"].nbytes and not out.tensors["w"].flags.writeable
