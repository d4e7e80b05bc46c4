"""Model-sized vectors, reused from round to round.

An agent's secure round makes a few vectors the size of the model: the packed update
(:func:`medfl.secagg.vector.pack_fit`), the masks built ahead (``premask``) and the masked
upload; ResNet-18's are 45 MB each. The coordinator receives one such upload per agent, in
16 MiB frames joined into one array (:mod:`medfl.wire.envelope`). Vectors that large are above
glibc's mmap threshold (at most 32 MiB), so every fresh one is a fresh mapping whose pages the
kernel zeroes on first touch, and freeing it hands them back. On a busy machine that first touch
can cost far more than the work itself: in the 10-agent round on the 2-core VM
(``benchmarks/round_profile.py``) the kernel spent about 1.8 CPU s per round zeroing the agents'
fresh vectors, tens of milliseconds each, where an idle process fills one in 5-8 ms. A
:class:`VectorPool` keeps such vectors mapped and hands them out again.

A vector is handed out again only when nothing else holds it: the pool checks that its own
reference is the only one (CPython reference counts). A slice, a memoryview, an envelope or a
ZeroMQ zero-copy frame still being sent all hold a reference, so an upload is never overwritten
while it is in flight; the pool then makes another vector (up to ``keep`` vectors and
``max_bytes``; past that it hands out plain fresh arrays, as without a pool).
"""

from __future__ import annotations

import sys
import threading

import numpy as np

__all__ = ["MIN_ELEMENTS", "VectorPool", "default_pool"]

#: Vectors shorter than this are made fresh (small arrays come from the heap anyway).
MIN_ELEMENTS = 1 << 16


def _refs_in(held: list[np.ndarray], i: int) -> int:
    """References to ``held[i]``: the list's own, plus this frame's and the call's (3 when no one else holds it)."""
    vec = held[i]
    return sys.getrefcount(vec)


_OWN_REFS = _refs_in([np.empty(1)], 0)


class VectorPool:
    """Reusable 1-D arrays, by length and dtype (thread-safe).

    Parameters
    ----------
    keep : int
        Most vectors held at once, in use or free.
    max_bytes : int
        Most bytes held at once: what a burst of large messages can leave behind.
    """

    def __init__(self, *, keep: int = 6, max_bytes: int = 1 << 30) -> None:
        if keep < 0 or max_bytes < 0:
            raise ValueError(f"keep and max_bytes must be >= 0, got {keep} and {max_bytes}")
        self.keep = keep
        self.max_bytes = max_bytes
        self._held: list[np.ndarray] = []
        self._lock = threading.Lock()

    def _free_index(self, n: int | None = None, dtype: np.dtype | None = None) -> int | None:
        """Index of a vector only the pool holds (of that length and dtype, if given)."""
        for i in range(len(self._held)):
            if n is not None and (self._held[i].shape != (n,) or self._held[i].dtype != dtype):
                continue
            if _refs_in(self._held, i) == _OWN_REFS:
                return i
        return None

    def empty(self, n: int, dtype: np.typing.DTypeLike) -> np.ndarray:
        """A C-contiguous vector of ``n`` elements of ``dtype``, contents undefined."""
        dt = np.dtype(dtype)
        if n < MIN_ELEMENTS or self.keep == 0:
            return np.empty(n, dtype=dt)
        with self._lock:
            i = self._free_index(n, dt)
            if i is not None:
                return self._held[i]
            nbytes = n * dt.itemsize
            # make room: drop free vectors of other shapes; if that is not enough, a plain fresh array, not kept
            while len(self._held) >= self.keep or self._held_bytes() + nbytes > self.max_bytes:
                i = self._free_index()
                if i is None:
                    return np.empty(n, dtype=dt)
                del self._held[i]
            vec = np.empty(n, dtype=dt)
            self._held.append(vec)
            return vec

    def zeros(self, n: int, dtype: np.typing.DTypeLike) -> np.ndarray:
        """Like :meth:`empty`, filled with zeros."""
        vec = self.empty(n, dtype)
        vec.fill(0)
        return vec

    def _held_bytes(self) -> int:
        """Bytes of the vectors held (the caller holds the lock)."""
        return sum(v.nbytes for v in self._held)

    def __len__(self) -> int:
        """Vectors held (in use or free)."""
        with self._lock:
            return len(self._held)

    def clear(self) -> None:
        """Drop every vector held (those in use stay valid for their holders)."""
        with self._lock:
            self._held.clear()


_DEFAULT = VectorPool()


def default_pool() -> VectorPool:
    """The process's pool for the secure path (the agent's rounds share it)."""
    return _DEFAULT
