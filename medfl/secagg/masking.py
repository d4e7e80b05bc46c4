"""Quantize + mask on the agent and unmask + dequantize on the coordinator (the secagg data path).

A masked upload is ``y = Q(x) + sum_j s_j * PRG(k_j) mod 2^k`` where ``Q`` is the stochastic
fixed-point encoding of :mod:`medfl.fixed_point`, each ``k_j`` a 32-byte mask seed (pairwise or
self) with sign ``s_j`` in {+1, -1}, and ``PRG(k)`` the ChaCha20 keystream (RFC 8439) of key
``k``, the round's 12-byte nonce and block counter 0, read as little-endian uint32 / uint64
words. Removing masks is the same operation with the signs flipped. These definitions are fixed;
native kernels (``csrc/secagg``) implement them bit for bit and this module's ``*_reference``
functions define them.

References
----------
.. [1] Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
   CCS 2017 (pairwise and self masks).
.. [2] Nir and Langley, "ChaCha20 and Poly1305 for IETF Protocols", RFC 8439, 2018.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from medfl import fixed_point as fxp
from medfl.secagg.quantization import QuantSpec

__all__ = ["NONCE_BYTES", "SEED_BYTES", "MaskSeed", "apply_masks", "apply_masks_reference", "dequantize_sum",
           "quantize_and_mask", "quantize_and_mask_reference", "unmask_and_dequantize",
           "unmask_and_dequantize_reference"]

SEED_BYTES = 32
NONCE_BYTES = 12


@dataclass(frozen=True)
class MaskSeed:
    """One mask: a ChaCha20 key and whether its keystream is added (+1) or subtracted (-1)."""

    seed: bytes
    sign: int

    def __post_init__(self) -> None:
        """Check the seed length and sign."""
        if len(self.seed) != SEED_BYTES:
            raise ValueError(f"mask seed must be {SEED_BYTES} bytes, got {len(self.seed)}")
        if self.sign not in (1, -1):
            raise ValueError(f"mask sign must be +1 or -1, got {self.sign}")

    def __repr__(self) -> str:
        """Never print the seed."""
        return f"MaskSeed(sign={self.sign:+d}, seed=<{SEED_BYTES} bytes>)"


def _check_nonce(nonce: bytes) -> None:
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"round nonce must be {NONCE_BYTES} bytes, got {len(nonce)}")


def keystream_words_reference(seed: bytes, nonce: bytes, n: int, dtype: type[np.unsignedinteger]) -> np.ndarray:
    """``n`` little-endian ring words of the ChaCha20 keystream (OpenSSL via ``cryptography``).

    ``cryptography`` takes a 16-byte nonce: the 4-byte little-endian block counter, then the
    RFC 8439 nonce.
    """
    _check_nonce(nonce)
    nbytes = n * np.dtype(dtype).itemsize
    enc = Cipher(algorithms.ChaCha20(seed, b"\0\0\0\0" + nonce), mode=None).encryptor()
    stream = enc.update(bytes(nbytes))
    return np.frombuffer(stream, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)


def apply_masks_reference(vec: np.ndarray, masks: Sequence[MaskSeed], nonce: bytes) -> None:
    """Add ``sign * PRG(seed)`` of every mask to the ring vector ``vec`` in place (wrapping)."""
    for m in masks:
        ks = keystream_words_reference(m.seed, nonce, vec.size, vec.dtype.type)
        if m.sign > 0:
            np.add(vec, ks, out=vec)
        else:
            np.subtract(vec, ks, out=vec)


def quantize_and_mask_reference(update: np.ndarray, *, spec: QuantSpec, masks: Sequence[MaskSeed], nonce: bytes,
                                rounding_seed: int) -> np.ndarray:
    """Reference of :func:`quantize_and_mask` (``update`` must already be clipped)."""
    x = np.ascontiguousarray(update, dtype=np.float32).reshape(-1)
    q = fxp.encode_reference(x, frac_bits=spec.frac_bits, ring_bits=spec.ring_bits, rounding="stochastic",
                             seed=rounding_seed)
    apply_masks_reference(q, masks, nonce)
    return q


def unmask_and_dequantize_reference(total: np.ndarray, *, spec: QuantSpec, masks: Sequence[MaskSeed],
                                    nonce: bytes) -> np.ndarray:
    """Reference of :func:`unmask_and_dequantize`; ``masks`` carry the signs to *remove*."""
    acc = np.array(total, dtype=spec.dtype, copy=True).reshape(-1)
    apply_masks_reference(acc, [MaskSeed(m.seed, -m.sign) for m in masks], nonce)
    return dequantize_sum(acc, spec=spec)


def dequantize_sum(total: np.ndarray, *, spec: QuantSpec) -> np.ndarray:
    """Decode an unmasked ring sum to float32 (two's complement, ``2^-f`` scale)."""
    return fxp.decode_reference(np.asarray(total, dtype=spec.dtype), frac_bits=spec.frac_bits)


def _mask_arrays(masks: Sequence[MaskSeed]) -> tuple[np.ndarray, np.ndarray]:
    keys = np.frombuffer(b"".join(m.seed for m in masks), dtype=np.uint8)
    return keys, np.array([m.sign for m in masks], dtype=np.int8)


_CUDA_MASKS_PER_CALL = 512


def _apply_masks_device(vec: Any, masks: Sequence[MaskSeed], nonce: bytes) -> None:
    """:func:`apply_masks` for a contiguous torch CUDA tensor or CuPy array, on its current stream."""
    from medfl import native

    native.active_backend(device=True)
    ptr, dtype, shape, stream, ctx = native._Cuda._info(vec, "vec")
    if dtype not in ("uint32", "uint64"):
        raise TypeError(f"vec must be a uint32 or uint64 ring vector, got {dtype}")
    mod = native.native_module()
    with ctx:
        for i in range(0, len(masks), _CUDA_MASKS_PER_CALL):
            keys, signs = _mask_arrays(masks[i:i + _CUDA_MASKS_PER_CALL])
            mod.apply_masks_cuda(ptr, 32 if dtype == "uint32" else 64, math.prod(shape), keys,  # type: ignore[union-attr]
                                 signs, nonce, stream)


def _quantize_and_mask_device(x: Any, *, spec: QuantSpec, masks: Sequence[MaskSeed], nonce: bytes,
                              rounding_seed: int) -> Any:
    """:func:`quantize_and_mask` of a flat float32 device array: one fused kernel on its stream."""
    from medfl import native

    native.active_backend(device=True)
    ptr, dtype, shape, stream, ctx = native._Cuda._info(x, "update")
    if dtype != "float32":
        raise TypeError(f"update must be float32, got {dtype}")
    seed = operator.index(rounding_seed) % 2**64
    if len(masks) > _CUDA_MASKS_PER_CALL:  # more masks than shared memory holds: encode, then mask in slices
        q = fxp.encode(x, frac_bits=spec.frac_bits, ring_bits=spec.ring_bits, rounding="stochastic", seed=seed)
        _apply_masks_device(q, masks, nonce)
        return q
    out = native._Cuda._empty(x, shape, "uint32" if spec.ring_bits == 32 else "uint64")
    keys, signs = _mask_arrays(masks)
    mod = native.native_module()
    with ctx:
        code, index = mod.quantize_and_mask_cuda(ptr, native._Cuda._info(out, "out")[0],  # type: ignore[union-attr]
                                                 spec.ring_bits, math.prod(shape), spec.frac_bits, seed, keys, signs,
                                                 nonce, stream)
    if code:
        host = x.cpu().numpy() if hasattr(x, "cpu") else x.get()
        fxp.raise_for_status(code, index, host, spec.frac_bits, spec.ring_bits)
    return out


def apply_masks(vec: Any, masks: Sequence[MaskSeed], nonce: bytes) -> None:
    """Add ``sign * PRG(seed)`` of every mask to the C-contiguous ring vector ``vec`` in place.

    Native (one pass, each keystream tile consumed while in cache) where ``medfl._native`` is
    built, else :func:`apply_masks_reference`. A torch CUDA tensor or CuPy array is masked on
    its device, on the caller's current stream (one thread per 64-byte block, every keystream
    block generated in registers).
    """
    from medfl import native

    _check_nonce(nonce)
    if not masks:
        return
    if native._is_device_array(vec):
        _apply_masks_device(vec, masks, nonce)
        return
    if native.active_backend() == "reference" or not vec.flags.c_contiguous:
        apply_masks_reference(vec, masks, nonce)
        return
    keys, signs = _mask_arrays(masks)
    native.native_module().apply_masks(vec.reshape(-1), keys, signs, nonce)  # type: ignore[union-attr]


def quantize_and_mask(update: Any, *, spec: QuantSpec, masks: Sequence[MaskSeed], nonce: bytes,
                      rounding_seed: int, out: np.ndarray | None = None) -> Any:
    """Encode a clipped float32 update into Z_2^k and add every mask, in one pass where native.

    Parameters
    ----------
    update : ndarray, torch CUDA tensor or CuPy array of float32
        Flat update, already clipped (:func:`medfl.secagg.quantization.clip_to_norm`) and
        weighted; every coordinate within ``spec.clip_norm``. A device array is quantized and
        masked on its device (two kernels on the current stream) and the result stays there.
    spec : QuantSpec
        Ring and fractional bits.
    masks : sequence of MaskSeed
        Pairwise masks (sign by the order of the two agents) and the self mask (+1).
    nonce : bytes
        The round's 12-byte nonce (the same for every agent of the round).
    rounding_seed : int
        Seed of stochastic rounding, drawn from the CSPRNG by the caller.
    out : ndarray, optional
        Where to write the upload (host updates only): C-contiguous, ``spec.dtype``, one
        element per element of ``update``, and not overlapping it (e.g. a
        :class:`medfl.buffers.VectorPool` vector). Its contents are undefined if this
        raises.

    Returns
    -------
    ndarray (or device array) of uint32 or uint64
        The masked upload, flat (``out`` when given).

    References
    ----------
    .. [1] Bonawitz et al., CCS 2017, section 3.
    """
    from medfl import native

    _check_nonce(nonce)
    if native._is_device_array(update):
        if out is not None:
            raise TypeError("out= is for host (NumPy) updates; a device update's upload stays on its device")
        return _quantize_and_mask_device(update.reshape(-1), spec=spec, masks=masks, nonce=nonce,
                                         rounding_seed=rounding_seed)
    x = np.ascontiguousarray(update, dtype=np.float32).reshape(-1)
    if out is not None:
        _check_out(out, x, spec)
    mod = native.native_module()
    if native.active_backend() == "reference" or mod is None or not hasattr(mod, "quantize_and_mask"):
        q = fxp.encode(x, frac_bits=spec.frac_bits, ring_bits=spec.ring_bits, rounding="stochastic",
                       seed=rounding_seed)
        apply_masks(q, masks, nonce)
        if out is None:
            return q
        np.copyto(out, q)
        return out
    if out is None:
        out = np.empty(x.shape, dtype=spec.dtype)
    keys, signs = _mask_arrays(masks)
    code, index = mod.quantize_and_mask(x, out, spec.frac_bits, operator.index(rounding_seed) % 2**64, keys, signs,
                                        nonce)
    fxp.raise_for_status(code, index, x, spec.frac_bits, spec.ring_bits)
    return out


def _check_out(out: Any, x: np.ndarray, spec: QuantSpec) -> None:
    """Refuse an ``out`` that cannot take the upload of ``x`` (see :func:`quantize_and_mask`)."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a NumPy array, got {type(out).__name__}")
    if out.dtype != np.dtype(spec.dtype) or out.shape != (x.size,) or not out.flags.c_contiguous \
            or not out.flags.writeable:
        raise ValueError(f"out must be a writable C-contiguous {np.dtype(spec.dtype)} vector of {x.size} elements, got "
                         f"{out.dtype} shape {out.shape} (contiguous {out.flags.c_contiguous}, writable "
                         f"{out.flags.writeable})")
    if np.may_share_memory(out, x):
        raise ValueError("out overlaps the update; the upload needs memory of its own")


def unmask_and_dequantize(total: Any, *, spec: QuantSpec, masks: Sequence[MaskSeed],
                          nonce: bytes, copy: bool = True) -> Any:
    """Remove masks from the ring sum of the masked uploads and decode it to float32.

    Parameters
    ----------
    total : ndarray of uint32 or uint64
        Ring sum of the survivors' masked uploads.
    spec : QuantSpec
        Ring and fractional bits.
    masks : sequence of MaskSeed
        The masks as the agents *added* them: the survivors' self masks (+1) and, for each
        dropped agent, its pairwise masks with the survivors (signed as the survivors added
        them); each is subtracted here.
    nonce : bytes
        The round's nonce.
    copy : bool
        False: remove the masks from ``total`` itself (a writable, contiguous ring vector the
        caller no longer needs), which saves a copy of the whole sum.

    Returns
    -------
    ndarray of float32
        The sum of the survivors' (clipped, weighted) updates.
    """
    from medfl import native

    _check_nonce(nonce)
    if native._is_device_array(total):
        acc = total.reshape(-1)
        if copy:
            acc = acc.clone() if hasattr(acc, "clone") else acc.copy()
    elif copy:
        acc = np.array(total, dtype=spec.dtype, copy=True).reshape(-1)
    else:
        if (not isinstance(total, np.ndarray) or total.dtype != np.dtype(spec.dtype) or not total.flags.writeable
                or not total.flags.c_contiguous):
            raise ValueError(f"unmasking in place needs a writable, contiguous {np.dtype(spec.dtype)} ring vector, "
                             f"got {type(total).__name__} {getattr(total, 'dtype', '?')}")
        acc = total.reshape(-1)
    apply_masks(acc, [MaskSeed(m.seed, -m.sign) for m in masks], nonce)
    return fxp.decode(acc, frac_bits=spec.frac_bits)
