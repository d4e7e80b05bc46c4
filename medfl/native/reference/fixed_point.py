"""NumPy references of the ring kernels: fixed-point encode/decode, ring sums and the ring product.

They define the semantics that the C++ and CUDA kernels (``csrc/fixed_point``, ``csrc/smpc``)
implement bit for bit; the rules are written out in :mod:`medfl.native.fixed_point`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from medfl.native.checks import check_bits, raise_for_status, ring_bits_of

__all__ = ["decode_reference", "encode_reference", "ring_add_reference", "ring_matmul_reference", "ring_sum_reference",
           "uniforms_reference"]

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
Rounding = Literal["nearest", "stochastic"]
_UINT = {32: np.uint32, 64: np.uint64}
_SINT = {32: np.int32, 64: np.int64}


def _mix64(z: np.ndarray) -> np.ndarray:
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniforms_reference(seed: int, offset: int, n: int) -> np.ndarray:
    """Return the stochastic-rounding uniforms ``u_offset .. u_(offset+n-1)`` for ``seed``.

    Parameters
    ----------
    seed : int
        Seed (taken modulo 2^64).
    offset : int
        Flat index of the first element (modulo 2^64).
    n : int
        How many.

    Returns
    -------
    ndarray of float64
        ``(mix64(seed + (offset + i + 1) * 0x9E3779B97F4A7C15) >> 11) * 2^-53``, exact.

    References
    ----------
    .. [1] Steele, Lea and Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014.
    """
    with np.errstate(over="ignore"):
        i = np.arange(n, dtype=np.uint64) + np.uint64(offset % 2**64) + np.uint64(1)
        h = _mix64(np.uint64(seed % 2**64) + i * GOLDEN)
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53  # < 2^53: exact conversion


def encode_reference(x: np.ndarray, *, frac_bits: int, ring_bits: int = 64, rounding: Rounding = "nearest",
                     seed: int = 0, offset: int = 0) -> np.ndarray:
    """NumPy reference of :func:`medfl.native.encode`; defines the semantics (see :mod:`medfl.native.fixed_point`).

    Parameters
    ----------
    x : ndarray of float32
        Values, any shape and strides.
    frac_bits : int
        Fractional bits ``f``.
    ring_bits : {32, 64}
        The ring.
    rounding : {"nearest", "stochastic"}
        Rounding rule.
    seed : int
        Seed of stochastic rounding (modulo 2^64).
    offset : int
        Flat index of ``x``'s first element in a longer vector encoded in chunks.

    Returns
    -------
    ndarray of uint32 or uint64
        Same shape as ``x``.

    References
    ----------
    .. [1] Gupta et al., "Deep Learning with Limited Numerical Precision", ICML 2015.
    """
    check_bits(frac_bits, ring_bits)
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise TypeError(f"x must be float32, got {x.dtype}")
    flat = x.reshape(-1)
    y = flat.astype(np.float64) * 2.0**frac_bits
    with np.errstate(invalid="ignore"):
        if rounding == "nearest":
            r = np.rint(y)
        elif rounding == "stochastic":
            r = np.floor(y)
            r = r + (uniforms_reference(seed, offset, y.size) < (y - r))
        else:
            raise ValueError(f"rounding must be 'nearest' or 'stochastic', got {rounding!r}")
        lim = 2.0 ** (ring_bits - 1)
        bad = ~((r >= -lim) & (r < lim))
    if bad.any():
        nonfinite = ~np.isfinite(flat)
        if nonfinite.any():
            raise_for_status(1, int(np.argmax(nonfinite)), flat, frac_bits, ring_bits)
        raise_for_status(2, int(np.argmax(bad)), flat, frac_bits, ring_bits)
    return r.astype(np.int64).astype(_UINT[ring_bits]).reshape(x.shape)


def decode_reference(v: np.ndarray, *, frac_bits: int) -> np.ndarray:
    """NumPy reference of :func:`medfl.native.decode`: ``float32(float64(int_k(v)) * 2^-f)``.

    Parameters
    ----------
    v : ndarray of uint32 or uint64
        Ring elements, any shape and strides.
    frac_bits : int
        Fractional bits used to encode.

    Returns
    -------
    ndarray of float32
        Same shape as ``v``.

    References
    ----------
    .. [1] Mohassel and Zhang, "SecureML: A System for Scalable Privacy-Preserving Machine
       Learning", IEEE S&P 2017 (two's complement fixed point in Z_2^k).
    """
    v = np.asarray(v)
    ring_bits = ring_bits_of(v)
    check_bits(frac_bits, ring_bits)
    s = v.view(_SINT[ring_bits]).astype(np.int64)
    return (s.astype(np.float64) * 2.0**-frac_bits).astype(np.float32)


def ring_sum_reference(rows: np.ndarray) -> np.ndarray:
    """NumPy reference of :func:`medfl.native.ring_sum`: column sums of an (m, n) array modulo 2^k.

    Parameters
    ----------
    rows : ndarray of uint32 or uint64, shape (m, n)
        One ring vector per row.

    Returns
    -------
    ndarray, shape (n,)
        Same dtype as ``rows``.

    References
    ----------
    .. [1] Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
       Learning", CCS 2017.
    """
    rows = np.asarray(rows)
    ring_bits_of(rows)
    if rows.ndim != 2:
        raise ValueError(f"rows must be 2-D (m, n), got shape {rows.shape}")
    return rows.sum(axis=0, dtype=rows.dtype)  # unsigned integer sums wrap modulo 2^k


def ring_add_reference(acc: np.ndarray, v: np.ndarray) -> None:
    """NumPy reference of :func:`medfl.native.ring_add_`: ``acc += v`` modulo 2^k, in place.

    Parameters
    ----------
    acc : ndarray of uint32 or uint64
        Accumulator, updated in place.
    v : ndarray
        Same dtype and shape as ``acc`` (or broadcastable to it).

    References
    ----------
    .. [1] Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
       Learning", CCS 2017.
    """
    ring_bits_of(acc)
    if np.asarray(v).dtype != acc.dtype:
        raise TypeError(f"v must have dtype {acc.dtype}, got {np.asarray(v).dtype}")
    np.add(acc, v, out=acc)


def ring_matmul_reference(a: np.ndarray, b: np.ndarray, *, out: np.ndarray | None = None,
                          accumulate: bool = False) -> np.ndarray:
    """NumPy reference of :func:`medfl.native.ring_matmul`: ``a @ b mod 2^64`` (``out +=`` with ``accumulate``).

    Parameters
    ----------
    a, b : ndarray of uint64, shapes (m, k) and (k, n)
        Ring matrices.
    out : ndarray of uint64, shape (m, n), optional
        Where the result goes (required with ``accumulate``).
    accumulate : bool
        Add the product to ``out`` instead of overwriting it.

    Returns
    -------
    ndarray of uint64, shape (m, n)
        ``out``, or a new array.
    """
    prod = a @ b  # NumPy's integer matmul wraps modulo 2^64 (no BLAS for integers)
    if out is None:
        if accumulate:
            raise ValueError("accumulate=True needs out (the matrix to add the product to)")
        return prod
    if accumulate:
        out += prod
    else:
        out[...] = prod
    return out
