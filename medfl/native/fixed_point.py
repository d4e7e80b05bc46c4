"""Fixed-point encoding of float32 into the ring Z_2^k (k = 32 or 64), and ring sums.

Secure aggregation and encrypted inference compute on integers modulo 2^k; this module maps
float32 values there and back, and sums ring vectors. The rules below are the definition that
every backend (the NumPy reference :mod:`medfl.native.reference.fixed_point`, the C++ and CUDA
kernels in ``csrc/fixed_point``)
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

import math
from fractions import Fraction
from typing import Any, Literal

import numpy as np

from medfl.native import backend, checks, cuda
from medfl.native.reference import fixed_point as ref

__all__ = ["decode", "encode", "max_abs_for", "ring_add_", "ring_sum"]

Rounding = Literal["nearest", "stochastic"]


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
    checks.check_bits(frac_bits, ring_bits)
    if isinstance(n_summands, bool) or not isinstance(n_summands, int) or n_summands < 1:
        raise ValueError(f"n_summands must be an integer >= 1, got {n_summands!r}")
    top = (2 ** (ring_bits - 1) - 1) // n_summands  # largest |r| with n * |r| < 2^(k-1)
    exact = Fraction(top, 2**frac_bits)
    bound = np.float32(float(exact))
    if Fraction(float(bound)) > exact:
        bound = np.nextafter(bound, np.float32(0))
    return float(bound)


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
    where = backend.backend_of(x)
    if where == "cuda":
        return _encode_cuda(x, frac_bits=frac_bits, ring_bits=ring_bits, rounding=rounding, seed=seed, offset=offset)
    if where == "reference":
        return ref.encode_reference(checks.host_float32(x), frac_bits=frac_bits, ring_bits=ring_bits,
                                    rounding=rounding, seed=checks.u64(seed, "seed"),
                                    offset=checks.u64(offset, "offset"))
    stochastic = checks.check_rounding(rounding)
    checks.check_bits(frac_bits, ring_bits)
    xc = checks.host_float32(x)
    out = np.empty(xc.shape, dtype=np.uint32 if ring_bits == 32 else np.uint64)
    code, index = backend.module().encode(xc, out, frac_bits, stochastic, checks.u64(seed, "seed"),
                                                 checks.u64(offset, "offset"))
    checks.raise_for_status(code, index, xc, frac_bits, ring_bits)
    return out


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
    where = backend.backend_of(v)
    if where == "cuda":
        return _decode_cuda(v, frac_bits=frac_bits)
    vc = checks.host_ring(v, "v")
    if where == "reference":
        return ref.decode_reference(vc, frac_bits=frac_bits)
    checks.check_bits(frac_bits, 32 if vc.dtype == np.uint32 else 64)
    out = np.empty(vc.shape, dtype=np.float32)
    backend.module().decode(vc, out, frac_bits)
    return out


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
    where = backend.backend_of(rows)
    if where == "cuda":
        return _ring_sum_cuda(rows)
    rc = checks.host_ring(rows, "rows")
    if where == "reference":
        return ref.ring_sum_reference(rc)
    if rc.ndim != 2:
        raise ValueError(f"rows must be 2-D (m, n), got shape {rc.shape}")
    out = np.empty(rc.shape[1], dtype=rc.dtype)
    backend.module().ring_sum(rc, out)
    return out


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
    where = backend.backend_of(acc)
    if where == "cuda":
        _ring_add_cuda(acc, v)
        return acc
    checks.check_add(acc, v)
    if where == "reference":
        ref.ring_add_reference(acc, np.asarray(v).reshape(acc.shape))
    else:
        backend.module().ring_add(acc, checks.c_order(v))
    return acc


def _encode_cuda(x: Any, *, frac_bits: int, ring_bits: int, rounding: str, seed: int, offset: int) -> Any:
    stochastic = checks.check_rounding(rounding)
    checks.check_bits(frac_bits, ring_bits)
    seed, offset = checks.u64(seed, "seed"), checks.u64(offset, "offset")
    ptr, dtype, shape, stream, ctx = cuda.info(x, "x")
    if dtype != "float32":
        raise TypeError(f"x must be float32, got {dtype}")
    out = cuda.empty(x, shape, "uint32" if ring_bits == 32 else "uint64")
    with ctx:
        code, index = backend.module().encode_cuda(ptr, cuda.info(out, "out")[0], ring_bits, math.prod(shape),
                                                          frac_bits, stochastic, seed, offset, stream)
    if code:
        checks.raise_for_status(code, index, cuda.host_copy(x), frac_bits, ring_bits)
    return out


def _decode_cuda(v: Any, *, frac_bits: int) -> Any:
    ptr, dtype, shape, stream, ctx = cuda.info(v, "v")
    if dtype not in ("uint32", "uint64"):
        raise TypeError(f"v must be uint32 or uint64, got {dtype}")
    bits = 32 if dtype == "uint32" else 64
    checks.check_bits(frac_bits, bits)
    out = cuda.empty(v, shape, "float32")
    with ctx:
        backend.module().decode_cuda(ptr, bits, cuda.info(out, "out")[0], math.prod(shape), frac_bits, stream)
    return out


def _ring_sum_cuda(rows: Any) -> Any:
    ptr, dtype, shape, stream, ctx = cuda.info(rows, "rows")
    if dtype not in ("uint32", "uint64"):
        raise TypeError(f"rows must be uint32 or uint64, got {dtype}")
    if len(shape) != 2:
        raise ValueError(f"rows must be 2-D (m, n), got shape {shape}")
    out = cuda.empty(rows, (shape[1],), dtype)
    with ctx:
        backend.module().ring_sum_cuda(ptr, cuda.info(out, "out")[0], 32 if dtype == "uint32" else 64,
                                              shape[0], shape[1], stream)
    return out


def _ring_add_cuda(acc: Any, v: Any) -> None:
    aptr, adtype, ashape, stream, ctx = cuda.info(acc, "acc")
    if not backend.is_device_array(v):
        raise TypeError(f"acc is a GPU array but v is {type(v).__name__}; put both on the same device")
    vptr, vdtype, vshape, _, _ = cuda.info(v, "v")
    cuda.same_device(acc, v)
    if adtype not in ("uint32", "uint64") or vdtype != adtype or math.prod(ashape) != math.prod(vshape):
        raise ValueError(f"acc and v must be uint32/uint64 of the same dtype and size, got {adtype}{ashape} "
                         f"and {vdtype}{vshape}")
    with ctx:
        backend.module().ring_add_cuda(aptr, vptr, 32 if adtype == "uint32" else 64, math.prod(ashape), stream)
