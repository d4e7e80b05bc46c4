"""Fixed-point encoding of float32 into the ring Z_2^k (k = 32 or 64), and ring sums.

Secure aggregation and encrypted inference compute on integers modulo 2^k; this module maps
float32 values there and back, and sums ring vectors. The semantics below are the definition
every backend (the NumPy reference here, the C++ and CUDA kernels in csrc/fixed_point)
implements bit for bit:

- ``y = float64(x) * 2^f`` (exact), with ``f`` fractional bits, ``0 <= f <= k - 2``.
- nearest: ``r = rint(y)``, round half to even.
- stochastic: ``r = floor(y) + [u_i < y - floor(y)]`` with
  ``u_i = (mix64(seed + (offset + i + 1) * 0x9E3779B97F4A7C15) >> 12) * 2^-52``, where ``mix64``
  is the SplitMix64 finaliser and ``i`` the flat C-order index. Unbiased to within 2^-52;
  ``offset`` lets a long vector be encoded in chunks with the result of one piece.
- ``r`` must satisfy ``-2^(k-1) <= r < 2^(k-1)``: otherwise :class:`RingOverflowError` (the
  first offending index, its value, the largest |x| that fits); NaN or infinity anywhere is a
  :class:`NonFiniteError`. On error no result is returned.
- stored as ``uint_k(int64(r))`` (two's complement); decode is
  ``float32(float64(int_k(v)) * 2^-f)``.
- ring sums wrap modulo 2^k.

The seed of stochastic rounding is the caller's: secret uses draw it from the CSPRNG.

References
----------
.. [1] Steele, Lea and Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014
   (SplitMix64).
.. [2] Gupta et al., "Deep Learning with Limited Numerical Precision", ICML 2015 (stochastic
   rounding).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from medfl.errors import NonFiniteError, RingOverflowError

__all__ = [
    "decode",
    "decode_reference",
    "encode",
    "encode_reference",
    "max_abs_for",
    "ring_add_",
    "ring_add_reference",
    "ring_sum",
    "ring_sum_reference",
]

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
Rounding = Literal["nearest", "stochastic"]
_UINT = {32: np.uint32, 64: np.uint64}
_SINT = {32: np.int32, 64: np.int64}


def max_abs_for(frac_bits: int, ring_bits: int, n_summands: int = 1) -> float:
    """The largest |x| such that ``n_summands`` encoded values sum without wrapping.

    Parameters
    ----------
    frac_bits : int
        Fractional bits.
    ring_bits : int
        32 or 64.
    n_summands : int
        How many values are added.
    """
    _check_bits(frac_bits, ring_bits)
    if n_summands < 1:
        raise ValueError(f"n_summands must be >= 1, got {n_summands}")
    return float(2.0 ** (ring_bits - 1 - frac_bits) / n_summands) - 2.0 ** -frac_bits


def _check_bits(frac_bits: int, ring_bits: int) -> None:
    if ring_bits not in (32, 64):
        raise ValueError(f"ring_bits must be 32 or 64, got {ring_bits}")
    if not 0 <= frac_bits <= ring_bits - 2:
        raise ValueError(f"frac_bits must be in [0, {ring_bits - 2}] for a {ring_bits}-bit ring, got {frac_bits}")


def _mix64(z: np.ndarray) -> np.ndarray:
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniforms_reference(seed: int, offset: int, n: int) -> np.ndarray:
    """The stochastic-rounding uniforms u_0..u_{n-1} (float64 in [0, 1)) for ``seed`` and ``offset``."""
    with np.errstate(over="ignore"):
        i = np.arange(n, dtype=np.uint64) + np.uint64(offset % 2**64) + np.uint64(1)
        h = _mix64(np.uint64(seed % 2**64) + i * GOLDEN)
    return (h >> np.uint64(12)).astype(np.float64) * 2.0 ** -52


def raise_for_status(code: int, index: int, x: np.ndarray, frac_bits: int, ring_bits: int) -> None:
    """Turn a kernel's (code, index) into the typed error, naming the value seen and the fix."""
    if code == 0:
        return
    flat = np.asarray(x).reshape(-1)
    value = float(flat[index]) if 0 <= index < flat.size else float("nan")
    if code == 1:
        raise NonFiniteError(f"cannot encode non-finite value {value} at flat index {index}; "
                             "clip or drop NaN/inf before encoding")
    limit = 2.0 ** (ring_bits - 1 - frac_bits)
    raise RingOverflowError(f"value {value!r} at flat index {index} does not fit a {ring_bits}-bit ring with "
                            f"{frac_bits} fractional bits (|x| must be below {limit}); clip the input, lower "
                            f"frac_bits or use ring_bits=64")


def encode_reference(x: np.ndarray, *, frac_bits: int, ring_bits: int = 64, rounding: Rounding = "nearest",
                     seed: int = 0, offset: int = 0) -> np.ndarray:
    """NumPy reference of :func:`encode` (defines the semantics)."""
    _check_bits(frac_bits, ring_bits)
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise TypeError(f"x must be float32, got {x.dtype}")
    y = x.astype(np.float64).reshape(-1) * 2.0 ** frac_bits
    if rounding == "nearest":
        r = np.rint(y)
    elif rounding == "stochastic":
        r = np.floor(y)
        r = r + (uniforms_reference(seed, offset, y.size) < (y - r))
    else:
        raise ValueError(f"rounding must be 'nearest' or 'stochastic', got {rounding!r}")
    lim = 2.0 ** (ring_bits - 1)
    with np.errstate(invalid="ignore"):
        bad = ~((r >= -lim) & (r < lim))
    if bad.any():
        idx = int(np.argmax(bad))
        raise_for_status(2 if np.isfinite(x.reshape(-1)[idx]) else 1, idx, x, frac_bits, ring_bits)
    return r.astype(np.int64).astype(_UINT[ring_bits]).reshape(x.shape)


def decode_reference(v: np.ndarray, *, frac_bits: int) -> np.ndarray:
    """NumPy reference of :func:`decode`."""
    v = np.asarray(v)
    ring_bits = _ring_bits_of(v)
    _check_bits(frac_bits, ring_bits)
    s = v.view(_SINT[ring_bits]).astype(np.int64)
    return (s.astype(np.float64) * 2.0 ** -frac_bits).astype(np.float32)


def ring_sum_reference(rows: np.ndarray) -> np.ndarray:
    """NumPy reference of :func:`ring_sum`: column sums of an (m, n) array modulo 2^k."""
    rows = np.asarray(rows)
    _ring_bits_of(rows)
    if rows.ndim != 2:
        raise ValueError(f"rows must be 2-D (m, n), got shape {rows.shape}")
    return rows.sum(axis=0, dtype=rows.dtype)


def ring_add_reference(acc: np.ndarray, v: np.ndarray) -> None:
    """NumPy reference of :func:`ring_add_` (in place)."""
    np.add(acc, v, out=acc)


def _ring_bits_of(v: Any) -> int:
    dtype = np.dtype(getattr(v, "dtype", None) or np.float64)
    if dtype == np.uint32:
        return 32
    if dtype == np.uint64:
        return 64
    raise TypeError(f"ring arrays must be uint32 or uint64, got {dtype}")


def encode(x: Any, *, frac_bits: int, ring_bits: int = 64, rounding: Rounding = "nearest", seed: int = 0,
           offset: int = 0) -> Any:
    """Encode float32 values into Z_2^k (see the module docstring for the exact rule).

    Parameters
    ----------
    x : ndarray, torch.Tensor or cupy.ndarray of float32
        Values; device arrays stay on their device.
    frac_bits : int
        Fractional bits f.
    ring_bits : {32, 64}
        The ring.
    rounding : {"nearest", "stochastic"}
        Rounding rule.
    seed : int
        Seed of stochastic rounding (uint64).
    offset : int
        Index of ``x[0]`` in a longer vector encoded in chunks.

    Returns
    -------
    Same kind of array as ``x``, dtype uint32 or uint64, same shape.
    """
    from medfl import native

    return native.backend_for(x).encode(x, frac_bits=frac_bits, ring_bits=ring_bits, rounding=rounding,
                                        seed=seed, offset=offset)


def decode(v: Any, *, frac_bits: int) -> Any:
    """Decode ring elements (uint32 or uint64) to float32.

    Parameters
    ----------
    v : ndarray, torch.Tensor or cupy.ndarray of uint32/uint64
        Ring elements.
    frac_bits : int
        Fractional bits used to encode.
    """
    from medfl import native

    return native.backend_for(v).decode(v, frac_bits=frac_bits)


def ring_sum(rows: Any) -> Any:
    """Column sums modulo 2^k of an (m, n) stack of ring vectors (aggregation).

    Parameters
    ----------
    rows : 2-D array of uint32/uint64
        One vector per row.
    """
    from medfl import native

    return native.backend_for(rows).ring_sum(rows)


def ring_add_(acc: Any, v: Any) -> Any:
    """``acc += v`` modulo 2^k, in place (streaming aggregation); returns ``acc``.

    Parameters
    ----------
    acc : array of uint32/uint64
        Accumulator, C-contiguous and writable.
    v : array of the same dtype and size
        Added vector.
    """
    from medfl import native

    native.backend_for(acc).ring_add_(acc, v)
    return acc
