"""Fixed-point encoding of float32 into the ring Z_2^k (k = 32 or 64), and ring sums.

Secure aggregation and encrypted inference compute on integers modulo 2^k; this module maps
float32 values there and back, and sums ring vectors. The rules below are the definition that
every backend (the NumPy reference here, the C++ and CUDA kernels in ``csrc/fixed_point``)
implements bit for bit; secure aggregation and SMPC rely on them, so they never change:

- Ring: Z_2^k, k in {32, 64}, stored as uint32 / uint64 (two's complement for signed values).
  Fractional bits ``f`` with ``0 <= f <= k - 2``.
- ``y = float64(x) * 2^f`` (exact).
- nearest: ``r = rint(y)``, round half to even (``np.rint``, C ``nearbyint`` in the default
  rounding mode, CUDA ``rint``).
- stochastic: ``r = floor(y)``, ``frac = y - r`` (exact), then ``r += 1`` if ``u_i < frac`` with
  ``h_i = mix64(seed + (offset + i + 1) * 0x9E3779B97F4A7C15 mod 2^64)`` and
  ``u_i = (h_i >> 11) * 2^-53`` (an exact double in [0, 1)). ``mix64`` is the SplitMix64
  finaliser (``z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27; z *= 0x94D049BB133111EB;
  z ^= z >> 31``), ``i`` the flat C-order index of the element. Unbiased to within 2^-53;
  ``offset`` lets a long vector be encoded in chunks with the result of one piece.
- Range: ``-2^(k-1) <= r < 2^(k-1)``, otherwise :class:`~medfl.errors.RingOverflowError`
  naming the first offending flat index, its value and the largest |x| that fits
  (``2^(k-1-f)``). NaN or infinity anywhere is a :class:`~medfl.errors.NonFiniteError` naming
  the first non-finite index and value; it takes precedence over an overflow elsewhere.
  On error the caller gets no result: outputs are allocated here and dropped, so no partial
  state escapes (the kernels may have written part of their scratch output).
- Output: ``uint_k(int64(r))``.
- decode: ``s = int_k(v)`` (two's complement), ``float32(float64(s) * 2^-f)``; the int64 ->
  float64 conversion rounds half to even, and that is part of the definition.
- ``ring_sum`` of an (m, n) stack and ``ring_add_`` wrap modulo 2^k.

The seed of stochastic rounding is the caller's: secret uses draw it from the CSPRNG. The
uniforms are not secret-grade randomness and do not need to be: they only make rounding
unbiased.

References
----------
.. [1] Steele, Lea and Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014
   (SplitMix64).
.. [2] Gupta et al., "Deep Learning with Limited Numerical Precision", ICML 2015 (stochastic
   rounding).
.. [3] Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
   Learning", CCS 2017 (fixed-point updates summed in Z_2^k).
"""

from __future__ import annotations

from fractions import Fraction
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
    "uniforms_reference",
]

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
Rounding = Literal["nearest", "stochastic"]
_UINT = {32: np.uint32, 64: np.uint64}
_SINT = {32: np.int32, 64: np.int64}


def max_abs_for(frac_bits: int, ring_bits: int, n_summands: int = 1) -> float:
    """Return the largest |x| such that ``n_summands`` encoded values sum without wrapping.

    Any float32 values with ``|x| <= max_abs_for(f, k, n)`` encode (with either rounding) to
    integers whose sum of ``n`` stays in ``[-2^(k-1), 2^(k-1))``. The bound is
    ``floor((2^(k-1) - 1) / n) * 2^-f`` rounded down to a float32, so clipping a float32 array
    to it is safe.

    Parameters
    ----------
    frac_bits : int
        Fractional bits ``f``.
    ring_bits : int
        32 or 64.
    n_summands : int
        How many encoded values are added (the number of parties of an aggregate).

    Returns
    -------
    float
        The bound, exactly representable as a float32.

    References
    ----------
    .. [1] Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
       Learning", CCS 2017.
    """
    _check_bits(frac_bits, ring_bits)
    if isinstance(n_summands, bool) or not isinstance(n_summands, int) or n_summands < 1:
        raise ValueError(f"n_summands must be an integer >= 1, got {n_summands!r}")
    top = (2 ** (ring_bits - 1) - 1) // n_summands  # largest |r| with n * |r| < 2^(k-1)
    exact = Fraction(top, 2**frac_bits)
    bound = np.float32(float(exact))
    if Fraction(float(bound)) > exact:
        bound = np.nextafter(bound, np.float32(0))
    return float(bound)


def _check_bits(frac_bits: int, ring_bits: int) -> None:
    for name, value in (("frac_bits", frac_bits), ("ring_bits", ring_bits)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
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


def raise_for_status(code: int, index: int, x: Any, frac_bits: int, ring_bits: int) -> None:
    """Turn a kernel's ``(code, index)`` into the typed error, naming the value seen and the fix.

    Parameters
    ----------
    code : int
        0 (ok), 1 (non-finite) or 2 (overflow), as returned by the kernels.
    index : int
        First offending flat index.
    x : ndarray
        The encoded input (host copy), to report the value.
    frac_bits, ring_bits : int
        The encoding parameters, to report the limit.
    """
    if code == 0:
        return
    flat = np.asarray(x).reshape(-1)
    value = float(flat[index]) if 0 <= index < flat.size else float("nan")
    if code == 1:
        raise NonFiniteError(f"cannot encode non-finite value {value} at flat index {index}; "
                             "clip or drop NaN/inf before encoding")
    if code != 2:
        raise ValueError(f"unknown kernel status code {code} (index {index})")
    limit = 2.0 ** (ring_bits - 1 - frac_bits)
    raise RingOverflowError(f"value {value!r} at flat index {index} does not fit a {ring_bits}-bit ring with "
                            f"{frac_bits} fractional bits (|x| must be below {limit}); clip the input, lower "
                            f"frac_bits or use ring_bits=64")


def encode_reference(x: np.ndarray, *, frac_bits: int, ring_bits: int = 64, rounding: Rounding = "nearest",
                     seed: int = 0, offset: int = 0) -> np.ndarray:
    """NumPy reference of :func:`encode`; defines the semantics (see the module docstring).

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
    _check_bits(frac_bits, ring_bits)
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
    """NumPy reference of :func:`decode`: ``float32(float64(int_k(v)) * 2^-f)``.

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
    ring_bits = _ring_bits_of(v)
    _check_bits(frac_bits, ring_bits)
    s = v.view(_SINT[ring_bits]).astype(np.int64)
    return (s.astype(np.float64) * 2.0**-frac_bits).astype(np.float32)


def ring_sum_reference(rows: np.ndarray) -> np.ndarray:
    """NumPy reference of :func:`ring_sum`: column sums of an (m, n) array modulo 2^k.

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
    _ring_bits_of(rows)
    if rows.ndim != 2:
        raise ValueError(f"rows must be 2-D (m, n), got shape {rows.shape}")
    return rows.sum(axis=0, dtype=rows.dtype)  # unsigned integer sums wrap modulo 2^k


def ring_add_reference(acc: np.ndarray, v: np.ndarray) -> None:
    """NumPy reference of :func:`ring_add_`: ``acc += v`` modulo 2^k, in place.

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
    _ring_bits_of(acc)
    if np.asarray(v).dtype != acc.dtype:
        raise TypeError(f"v must have dtype {acc.dtype}, got {np.asarray(v).dtype}")
    np.add(acc, v, out=acc)


def _ring_bits_of(v: Any) -> int:
    dtype = getattr(v, "dtype", None)
    if dtype == np.uint32:
        return 32
    if dtype == np.uint64:
        return 64
    raise TypeError(f"ring arrays must be uint32 or uint64, got {dtype if dtype is not None else type(v).__name__}")


def encode(x: Any, *, frac_bits: int, ring_bits: int = 64, rounding: Rounding = "nearest", seed: int = 0,
           offset: int = 0) -> Any:
    """Encode float32 values into Z_2^k (see the module docstring for the exact rule).

    Parameters
    ----------
    x : ndarray, torch.Tensor or cupy.ndarray of float32
        Values; device arrays stay on their device and run on the caller's current stream.
    frac_bits : int
        Fractional bits ``f``, ``0 <= f <= ring_bits - 2``.
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
    array
        Same kind of array as ``x``, dtype uint32 or uint64, same shape.

    Raises
    ------
    NonFiniteError
        NaN or infinity in ``x`` (first such index).
    RingOverflowError
        A value that does not fit the ring (first such index).

    References
    ----------
    .. [1] Gupta et al., "Deep Learning with Limited Numerical Precision", ICML 2015.
    """
    from medfl import native

    return native.backend_for(x).encode(x, frac_bits=frac_bits, ring_bits=ring_bits, rounding=rounding,
                                        seed=seed, offset=offset)


def decode(v: Any, *, frac_bits: int) -> Any:
    """Decode ring elements (uint32 or uint64, two's complement) to float32.

    Parameters
    ----------
    v : ndarray, torch.Tensor or cupy.ndarray of uint32/uint64
        Ring elements.
    frac_bits : int
        Fractional bits used to encode.

    Returns
    -------
    array
        Same kind of array and shape as ``v``, float32.

    References
    ----------
    .. [1] Mohassel and Zhang, "SecureML", IEEE S&P 2017.
    """
    from medfl import native

    return native.backend_for(v).decode(v, frac_bits=frac_bits)


def ring_sum(rows: Any) -> Any:
    """Column sums modulo 2^k of an (m, n) stack of ring vectors (aggregation).

    Parameters
    ----------
    rows : 2-D array of uint32/uint64
        One vector per row.

    Returns
    -------
    array
        Shape (n,), same dtype and kind as ``rows``.

    References
    ----------
    .. [1] Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
       Learning", CCS 2017.
    """
    from medfl import native

    return native.backend_for(rows).ring_sum(rows)


def ring_add_(acc: Any, v: Any) -> Any:
    """Add ``v`` to ``acc`` modulo 2^k, in place (streaming aggregation); return ``acc``.

    Parameters
    ----------
    acc : array of uint32/uint64
        Accumulator, C-contiguous and writable.
    v : array of the same dtype and size
        Added vector (any strides on the host).

    Returns
    -------
    array
        ``acc``.

    References
    ----------
    .. [1] Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
       Learning", CCS 2017.
    """
    from medfl import native

    native.backend_for(acc).ring_add_(acc, v)
    return acc
