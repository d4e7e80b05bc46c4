"""Quantize + mask on the agent and unmask + dequantize on the coordinator (the secagg data path).

A masked upload is ``y = Q(x) + sum_j s_j * PRG(k_j) mod 2^k`` where ``Q`` is the stochastic
fixed-point encoding of :mod:`medfl.native.fixed_point`, each ``k_j`` a 32-byte mask seed (pairwise or
self) with sign ``s_j`` in {+1, -1}, and ``PRG(k)`` the ChaCha20 keystream (RFC 8439) of key
``k``, the round's 12-byte nonce and block counter 0, read as little-endian uint32 / uint64
words. Removing masks is the same operation with the signs flipped. These definitions are fixed;
native kernels (``csrc/secagg``, dispatched by :mod:`medfl.native.masking`) implement them bit for
bit and :mod:`medfl.native.reference.masking` defines them.

References
----------
.. [1] Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
   CCS 2017 (pairwise and self masks).
.. [2] Nir and Langley, "ChaCha20 and Poly1305 for IETF Protocols", RFC 8439, 2018.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medfl import native
from medfl.native.reference import decode_reference
from medfl.secagg.quantization import QuantSpec

__all__ = ["NONCE_BYTES", "SEED_BYTES", "MaskSeed", "apply_masks", "dequantize_sum", "quantize_and_mask",
           "unmask_and_dequantize"]

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


def dequantize_sum(total: np.ndarray, *, spec: QuantSpec) -> np.ndarray:
    """Decode an unmasked ring sum to float32 (two's complement, ``2^-f`` scale)."""
    return decode_reference(np.asarray(total, dtype=spec.dtype), frac_bits=spec.frac_bits)


def apply_masks(vec: Any, masks: Sequence[MaskSeed], nonce: bytes) -> None:
    """Add ``sign * PRG(seed)`` of every mask to the C-contiguous ring vector ``vec`` in place.

    Native (one pass, each keystream tile consumed while in cache) where ``medfl._native`` is
    built, else :func:`medfl.native.reference.apply_masks_reference`. A torch CUDA tensor or
    CuPy array is masked on its device, on the caller's current stream (one thread per 64-byte
    block, every keystream block generated in registers).
    """
    _check_nonce(nonce)
    native.apply_masks(vec, masks, nonce)


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
    _check_nonce(nonce)
    if native.is_device_array(update):
        if out is not None:
            raise TypeError("out= is for host (NumPy) updates; a device update's upload stays on its device")
        return native.quantize_and_mask(update.reshape(-1), frac_bits=spec.frac_bits, ring_bits=spec.ring_bits,
                                        masks=masks, nonce=nonce, rounding_seed=rounding_seed)
    x = np.ascontiguousarray(update, dtype=np.float32).reshape(-1)
    if out is not None:
        _check_out(out, x, spec)
    return native.quantize_and_mask(x, frac_bits=spec.frac_bits, ring_bits=spec.ring_bits, masks=masks, nonce=nonce,
                                    rounding_seed=rounding_seed, out=out)


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
    _check_nonce(nonce)
    if native.is_device_array(total):
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
    return native.decode(acc, frac_bits=spec.frac_bits)
