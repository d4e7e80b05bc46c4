"""medfl.buffers: model-sized vectors reused only when nothing else holds them."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq

from medfl.buffers import MIN_ELEMENTS, VectorPool

N = MIN_ELEMENTS + 3  # pooled, and an odd length


def _addr(a: np.ndarray) -> int:
    return int(a.__array_interface__["data"][0])


def test_a_released_vector_is_handed_out_again_and_zeros_are_zero() -> None:
    pool = VectorPool(keep=2)
    a = pool.empty(N, np.uint32)
    assert a.shape == (N,) and a.dtype == np.uint32 and a.flags.c_contiguous and a.flags.writeable
    a.fill(7)
    where = _addr(a)
    del a
    z = pool.zeros(N, np.uint32)
    assert _addr(z) == where and not z.any()  # the same memory, cleared
    assert len(pool) == 1


@pytest.mark.parametrize("hold", ["reference", "slice", "memoryview", "reshaped view"])
def test_a_vector_still_held_anywhere_is_never_handed_out(hold: str) -> None:
    pool = VectorPool(keep=4)
    a = pool.empty(N, np.float32)
    a.fill(1.5)
    where = _addr(a)
    keeper = {"reference": lambda x: x, "slice": lambda x: x[10:20], "memoryview": memoryview,
              "reshaped view": lambda x: x[:-3].reshape(-1, 2)}[hold](a)
    del a
    b = pool.empty(N, np.float32)
    assert _addr(b) != where
    b.fill(-1.0)
    assert np.all(np.asarray(keeper) == 1.5)  # what is held was not written by the new vector's user
    del keeper
    assert _addr(pool.empty(N, np.float32)) == where  # released at last


def test_a_vector_queued_in_zeromq_zero_copy_is_not_reused_until_zeromq_lets_go() -> None:
    ctx = zmq.Context()
    try:
        rx = ctx.socket(zmq.PAIR)
        rx.bind("inproc://pool-test")
        tx = ctx.socket(zmq.PAIR)
        tx.connect("inproc://pool-test")
        pool = VectorPool(keep=4)
        up = pool.empty(N, np.uint32)
        up[:] = np.arange(N, dtype=np.uint32)
        where = _addr(up)
        tx.send(up, copy=False)  # queued, not received yet: ZeroMQ holds the buffer
        del up
        other = pool.empty(N, np.uint32)
        assert _addr(other) != where
        other.fill(0)
        got = rx.recv(copy=True)
        assert np.array_equal(np.frombuffer(got, np.uint32), np.arange(N, dtype=np.uint32))  # sent intact
        del other
        deadline = time.monotonic() + 10  # pyzmq drops its reference from its own thread once libzmq frees the message
        while True:
            again = pool.empty(N, np.uint32)
            if _addr(again) == where or time.monotonic() > deadline:
                break
            del again
            time.sleep(0.01)
        assert _addr(again) == where
        tx.close(linger=0)
        rx.close(linger=0)
    finally:
        ctx.term()


def test_limits_small_vectors_other_shapes_and_a_full_pool() -> None:
    pool = VectorPool(keep=2, max_bytes=3 * N * 4)
    small = pool.empty(MIN_ELEMENTS - 1, np.uint32)
    assert small.shape == (MIN_ELEMENTS - 1,) and len(pool) == 0  # small ones are never kept
    a, b = pool.empty(N, np.uint32), pool.empty(N, np.uint64)
    assert len(pool) == 2
    c = pool.empty(N, np.uint32)  # both held: a plain fresh array, not kept
    assert len(pool) == 2 and _addr(c) not in (_addr(a), _addr(b))
    del b
    d = pool.empty(2 * N, np.uint32)  # full: the free uint64 vector makes room for the new shape
    assert len(pool) == 2 and d.shape == (2 * N,)
    del a, c
    e = pool.empty(2 * N, np.float32)  # keep allows it, max_bytes does not with d held: a is dropped, e not kept
    assert e.shape == (2 * N,) and e.dtype == np.float32 and len(pool) == 1
    assert pool._held[0] is d  # only d is held
    pool.clear()
    assert len(pool) == 0
    d[:] = 1  # a vector in use stays valid after clear()
    assert int(d.sum()) == 2 * N
    with pytest.raises(ValueError, match="keep"):
        VectorPool(keep=-1)


def test_threads_never_share_a_vector() -> None:
    pool = VectorPool(keep=8)
    seen: list[int] = []
    lock = threading.Lock()
    errors: list[str] = []

    def worker(k: int) -> None:
        for i in range(200):
            v = pool.empty(N, np.int64)
            v[:8] = k * 1000 + i
            time.sleep(0)
            if not np.all(v[:8] == k * 1000 + i):
                errors.append(f"thread {k} saw its vector overwritten")
            with lock:
                seen.append(_addr(v))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(seen) == 800 and len(pool) <= 8
