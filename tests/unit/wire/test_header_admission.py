"""Header admission: decode(admit=) sees a checked header before any tensor is built, and the
connection watchdog cuts a TCP peer that streams past its budget while honest traffic passes."""

from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest
import zmq

from medfl.errors import MalformedMessage, MessageTooLarge, OutOfOrder
from medfl.wire import Envelope, MessageType, ServerChannel, SocketLimits, decode, encode
from medfl.wire.envelope import FRAME_BYTES
from medfl.wire.transport.guard import allowance

pytestmark = pytest.mark.timeout(60)


def _update(nbytes: int) -> list:
    return encode(Envelope(type=MessageType.UPDATE, job="j1", round=3, seq=7, body={"num_samples": 2},
                           tensors={"w": np.ones(nbytes, np.uint8)}))


def test_admit_sees_the_header_without_tensors_and_the_declared_bytes():
    seen = []
    env = decode(_update(1000), max_bytes=1 << 20, admit=lambda head, n: seen.append((head, n)))
    (head, n), = seen
    assert (head.type, head.job, head.round, head.seq, dict(head.body)) == (MessageType.UPDATE, "j1", 3, 7,
                                                                            {"num_samples": 2})
    assert head.tensors == {} and n == 1000
    assert env.tensors["w"].nbytes == 1000


def test_a_refusal_from_the_header_stops_before_parts_are_joined():
    frames = _update(FRAME_BYTES + 10)  # two parts: decoding would copy them into one pooled array
    assert len(frames) == 3

    def refuse(head, n):
        raise OutOfOrder(f"no job running; {n} bytes not decoded")
    with pytest.raises(OutOfOrder, match=f"{FRAME_BYTES + 10} bytes not decoded"):
        decode(frames, max_bytes=64 << 20, admit=refuse)


@pytest.mark.parametrize("frames", [
    [msgpack.packb({"v": 2, "type": "update", "job": None, "round": None, "seq": 1, "body": {},
                    "tensors": [["w", "float32", [4]]]}), b"x" * 15],       # declared 16 bytes, 15 sent
    [msgpack.packb({"v": 2, "type": "update", "job": None, "round": None, "seq": 1, "body": {},
                    "tensors": [["w", "float32", [1]], ["w", "float32", [1]]]}), b"abcd", b"efgh"],  # a name twice
    [msgpack.packb({"v": 2, "type": "update", "job": None, "round": None, "seq": 1, "body": {},
                    "tensors": [["w", "complex64", [1]]]}), b"12345678"],  # a dtype not on the list
])
def test_bad_specs_are_refused_before_admit_runs(frames):
    called = []
    with pytest.raises(MalformedMessage):
        decode(frames, max_bytes=1 << 20, admit=lambda head, n: called.append(n))
    assert called == []


def test_the_sum_of_frames_is_checked_before_the_header():
    frames = [b"not even msgpack"] + [b"x" * 1000] * 5
    with pytest.raises(MessageTooLarge):
        decode(frames, max_bytes=4000, admit=lambda head, n: pytest.fail("admit must not run"))


def test_limits_default_to_a_quarter_over_the_limit():
    lim = SocketLimits(max_message_bytes=8 << 20)
    assert lim.hard == lim.budget == 10 << 20 and lim.hwm == 64 and lim.handshake_ms == 10_000
    with pytest.raises(ValueError, match="hwm"):
        SocketLimits(hwm=0)


def test_allowance_grows_with_frames_and_time_only():
    assert allowance(frames=0, seconds=0) == 16 << 10
    assert allowance(frames=100, seconds=10) == (16 << 10) + 6400 + 640


def _wait(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def test_watchdog_cuts_a_streaming_peer_and_spares_honest_traffic():
    limits = SocketLimits(max_message_bytes=1 << 20)
    srv = ServerChannel(bind="tcp://127.0.0.1:0", keys=None, limits=limits)
    ctx = zmq.Context()
    honest, rogue = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
    try:
        for s in (honest, rogue):
            s.setsockopt(zmq.LINGER, 0)
            s.connect(srv.endpoint)
        assert srv.guard is not None
        for i in range(40):  # 40 x 0.9 MiB, each read at once: 36 MiB in total, never 1.25 MiB unread
            honest.send_multipart(encode(Envelope(type=MessageType.METRICS, seq=i + 1,
                                                  tensors={"w": np.ones(900_000, np.uint8)})), copy=False)
            assert _wait(lambda: srv.poll(10) and srv.recv() is not None)
        assert srv.guard.cuts == 0
        # one message of 256 frames of 256 KiB (64 MiB; libzmq sends it once the last frame is queued,
        # and the server's libzmq would hold all of it until the last frame arrives)
        chunk = np.ones(256 << 10, np.uint8)
        rogue.send_multipart([b"\x00" * 10] + [chunk] * 256, copy=False)
        assert _wait(lambda: srv.guard.cuts == 1)
        assert not srv.poll(200) or srv.recv() is None  # nothing of it was delivered
        assert all(v <= limits.budget for v in srv.guard.unread().values())
        honest.send_multipart(encode(Envelope(type=MessageType.HEARTBEAT, seq=1000)))
        assert _wait(lambda: srv.poll(10) and srv.recv() is not None)  # the honest peer is still served
    finally:
        honest.close(linger=0)
        rogue.close(linger=0)
        ctx.term()
        srv.close()


def test_no_watchdog_on_inproc_or_when_switched_off():
    ctx = zmq.Context()
    try:
        with ServerChannel(bind="inproc://adm", keys=None, context=ctx) as srv:
            assert srv.guard is None
        with ServerChannel(bind="tcp://127.0.0.1:0", keys=None, limits=SocketLimits(guard=False)) as srv:
            assert srv.guard is None
    finally:
        ctx.term()
