"""Exact-within-one-ulp truncation of shared fixed-point values with a dealer pair, in one round.

For ``|x| < 2^62`` (raw ring value) the parties open ``c = x + 2^62 + r`` with a uniform dealer
mask ``r``; ``c`` is uniform, so it reveals nothing. Writing ``r = r_msb 2^63 + r'`` and
``c = c_msb 2^63 + c'``, the top bit of ``x + 2^62 + r'`` is ``c_msb xor r_msb``, which is linear
in the shared ``r_msb`` once ``c_msb`` is public; hence
``floor(x / 2^f) = (c' >> f) - (r' >> f) + 2^(63-f) (c_msb xor r_msb) - 2^(62-f) + e`` with
``e`` in {0, 1}: the result is never off by more than one unit in the last place, unlike
SecureML's local truncation whose rare failures are huge.

References
----------
.. [1] Escudero, Ghosh, Keller, Rachuri and Scholl, "Improved Primitives for MPC over Mixed
   Arithmetic-Binary Circuits", CRYPTO 2020.
"""

from __future__ import annotations

import numpy as np

from medfl.errors import RingOverflowError
from medfl.smpc.dealer import TruncPair
from medfl.smpc.engine.channel import Channel
from medfl.smpc.ring import Shared

__all__ = ["HEADROOM_BITS", "check_headroom", "truncate"]

HEADROOM_BITS = 62
"""Raw shared values must satisfy ``|x| < 2^62`` before truncation."""

_OFFSET = np.uint64(2**HEADROOM_BITS)
_LOW = np.uint64(2**63 - 1)


def truncate(x: Shared, pair: TruncPair, channel: Channel) -> Shared:
    """Return shares of ``floor(x / 2^f)`` or one more, for ``|x| < 2^62``, in one round.

    Parameters
    ----------
    x : Shared
        Shares of a signed ring value with ``|x| < 2^62`` (a range plan guarantees it).
    pair : TruncPair
        A fresh dealer pair of the same shape; never reuse one.
    channel : Channel
        Opens ``x + 2^62 + r``.

    Returns
    -------
    Shared

    References
    ----------
    .. [1] Escudero et al., CRYPTO 2020.
    """
    if pair.r.s0.shape != x.s0.shape:
        raise ValueError(f"truncation pair has shape {pair.r.s0.shape}, value has {x.s0.shape}")
    f = np.uint64(pair.frac_bits)
    c = channel.open(x.s0 + _OFFSET + pair.r.s0, x.s1 + pair.r.s1)
    c_msb = c >> np.uint64(63)
    c_high = (c & _LOW) >> f
    top = np.uint64(1) << (np.uint64(63) - f)
    out = []
    for party in (0, 1):
        rm = pair.r_msb.of(party)
        xor = rm - np.uint64(2) * c_msb * rm
        s = top * xor - pair.r_low_shifted.of(party)
        if party == 0:
            s = s + c_high + top * c_msb - (_OFFSET >> f)
        out.append(s)
    return Shared(out[0], out[1])


def check_headroom(raw: np.ndarray) -> None:
    """Raise :class:`RingOverflowError` if a clear raw value is outside ``|x| < 2^62`` (tests, planning)."""
    v = np.asarray(raw, dtype=np.uint64).view(np.int64)
    bad = (v >= 2**HEADROOM_BITS) | (v <= -(2**HEADROOM_BITS))
    if bad.any():
        i = int(np.argmax(bad.reshape(-1)))
        raise RingOverflowError(f"raw value {int(v.reshape(-1)[i])} at index {i} exceeds the truncation "
                                f"headroom 2^{HEADROOM_BITS}; lower frac_bits or calibrate a smaller range")
