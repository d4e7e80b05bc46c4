"""The secagg masking kernels (csrc/secagg): add ChaCha20 masks to a ring vector, and quantize + mask in one pass.

A mask is any object with ``seed`` (32 bytes) and ``sign`` (+1 or -1), such as
:class:`medfl.secagg.masking.MaskSeed`. On the host the kernels consume each keystream tile
while it is in cache (OpenMP threads); on a device, one thread per 64-byte block generates every
keystream block in registers, on the caller's current stream. Both match
:mod:`medfl.native.reference.masking` bit for bit.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np

from medfl.native import backend, checks, cuda
from medfl.native.fixed_point import encode
from medfl.native.reference.masking import apply_masks_reference

__all__ = ["apply_masks", "quantize_and_mask"]

#: most masks one CUDA launch takes (their keys sit in shared memory)
CUDA_MASKS_PER_CALL = 512


def _mask_arrays(masks: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    keys = np.frombuffer(b"".join(m.seed for m in masks), dtype=np.uint8)
    return keys, np.array([m.sign for m in masks], dtype=np.int8)


def apply_masks(vec: Any, masks: Sequence[Any], nonce: bytes) -> None:
    """Add ``sign * PRG(seed)`` of every mask to the ring vector ``vec`` in place (mod 2^k).

    Parameters
    ----------
    vec : ndarray, torch CUDA tensor or CuPy array of uint32 or uint64
        The ring vector; a host vector that is not C-contiguous takes the reference path.
    masks : sequence of masks
        Each with ``seed`` and ``sign``.
    nonce : bytes
        The round's 12-byte nonce.

    References
    ----------
    .. [1] Bonawitz et al., CCS 2017; RFC 8439.
    """
    if not masks:
        return
    if backend.is_device_array(vec):
        _apply_masks_cuda(vec, masks, nonce)
        return
    if backend.active_backend() == "reference" or not vec.flags.c_contiguous:
        apply_masks_reference(vec, masks, nonce)
        return
    keys, signs = _mask_arrays(masks)
    backend.module().apply_masks(vec.reshape(-1), keys, signs, nonce)


def quantize_and_mask(x: Any, *, frac_bits: int, ring_bits: int, masks: Sequence[Any], nonce: bytes,
                      rounding_seed: int, out: np.ndarray | None = None) -> Any:
    """Encode the flat float32 ``x`` into Z_2^k (stochastic rounding) and add every mask, fused where native.

    Parameters
    ----------
    x : ndarray (C-contiguous), torch CUDA tensor or CuPy array of float32, flat
        The clipped update.
    frac_bits, ring_bits : int
        The fixed-point encoding (:mod:`medfl.native.fixed_point`).
    masks : sequence of masks
        Each with ``seed`` and ``sign``.
    nonce : bytes
        The round's 12-byte nonce.
    rounding_seed : int
        Seed of stochastic rounding (modulo 2^64).
    out : ndarray, optional
        A checked host output vector (host ``x`` only).

    Returns
    -------
    array of uint32 or uint64
        The masked vector (``out`` when given), on ``x``'s device.

    References
    ----------
    .. [1] Bonawitz et al., CCS 2017, section 3.
    """
    if backend.is_device_array(x):
        return _quantize_and_mask_cuda(x, frac_bits=frac_bits, ring_bits=ring_bits, masks=masks, nonce=nonce,
                                       rounding_seed=rounding_seed)
    mod = backend.native_module()
    if backend.active_backend() == "reference" or mod is None or not hasattr(mod, "quantize_and_mask"):
        q = encode(x, frac_bits=frac_bits, ring_bits=ring_bits, rounding="stochastic", seed=rounding_seed)
        apply_masks(q, masks, nonce)
        if out is None:
            return q
        np.copyto(out, q)
        return out
    if out is None:
        out = np.empty(x.shape, dtype=np.uint32 if ring_bits == 32 else np.uint64)
    keys, signs = _mask_arrays(masks)
    code, index = mod.quantize_and_mask(x, out, frac_bits, operator.index(rounding_seed) % 2**64, keys, signs, nonce)
    checks.raise_for_status(code, index, x, frac_bits, ring_bits)
    return out


def _apply_masks_cuda(vec: Any, masks: Sequence[Any], nonce: bytes) -> None:
    """:func:`apply_masks` for a contiguous torch CUDA tensor or CuPy array, on its current stream."""
    backend.active_backend(device=True)
    ptr, dtype, shape, stream, ctx = cuda.info(vec, "vec")
    if dtype not in ("uint32", "uint64"):
        raise TypeError(f"vec must be a uint32 or uint64 ring vector, got {dtype}")
    mod = backend.module()
    with ctx:
        for i in range(0, len(masks), CUDA_MASKS_PER_CALL):
            keys, signs = _mask_arrays(masks[i:i + CUDA_MASKS_PER_CALL])
            mod.apply_masks_cuda(ptr, 32 if dtype == "uint32" else 64, math.prod(shape), keys,
                                 signs, nonce, stream)


def _quantize_and_mask_cuda(x: Any, *, frac_bits: int, ring_bits: int, masks: Sequence[Any], nonce: bytes,
                            rounding_seed: int) -> Any:
    """:func:`quantize_and_mask` of a flat float32 device array: one fused kernel on its stream."""
    backend.active_backend(device=True)
    ptr, dtype, shape, stream, ctx = cuda.info(x, "update")
    if dtype != "float32":
        raise TypeError(f"update must be float32, got {dtype}")
    seed = operator.index(rounding_seed) % 2**64
    if len(masks) > CUDA_MASKS_PER_CALL:  # more masks than shared memory holds: encode, then mask in slices
        q = encode(x, frac_bits=frac_bits, ring_bits=ring_bits, rounding="stochastic", seed=seed)
        _apply_masks_cuda(q, masks, nonce)
        return q
    out = cuda.empty(x, shape, "uint32" if ring_bits == 32 else "uint64")
    keys, signs = _mask_arrays(masks)
    mod = backend.module()
    with ctx:
        code, index = mod.quantize_and_mask_cuda(ptr, cuda.info(out, "out")[0],
                                                 ring_bits, math.prod(shape), frac_bits, seed, keys, signs,
                                                 nonce, stream)
    if code:
        checks.raise_for_status(code, index, cuda.host_copy(x), frac_bits, ring_bits)
    return out
