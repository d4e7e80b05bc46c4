"""References of the secagg kernels: the ChaCha20 keystream (OpenSSL) and quantize + mask / unmask.

A masked upload is ``y = Q(x) + sum_j s_j * PRG(k_j) mod 2^k`` (see :mod:`medfl.secagg.masking`):
``Q`` the stochastic fixed-point encoding, ``PRG(k)`` the ChaCha20 keystream (RFC 8439) of key
``k``, the round's 12-byte nonce and block counter 0, read as little-endian ring words. A mask is
any object with ``seed`` (32 bytes) and ``sign`` (+1 or -1), such as
:class:`medfl.secagg.masking.MaskSeed`; a spec any object with ``frac_bits``, ``ring_bits`` and
``dtype``, such as :class:`medfl.secagg.quantization.QuantSpec`. ``cryptography`` takes a
16-byte nonce: the 4-byte little-endian block counter, then the RFC 8439 nonce.

References
----------
.. [1] Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
   CCS 2017 (pairwise and self masks).
.. [2] Nir and Langley, "ChaCha20 and Poly1305 for IETF Protocols", RFC 8439, 2018.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from medfl.native.checks import NONCE_BYTES, check_chacha20
from medfl.native.reference.fixed_point import decode_reference, encode_reference

__all__ = ["apply_masks_reference", "chacha20_keystream_reference", "keystream_words_reference",
           "quantize_and_mask_reference", "unmask_and_dequantize_reference"]


def chacha20_keystream_reference(key: bytes, nonce: bytes, counter: int, nbytes: int) -> bytes:
    """Reference of :func:`medfl.native.chacha20_keystream` (OpenSSL through ``cryptography``)."""
    counter, nbytes = check_chacha20(key, nonce, counter, nbytes)
    enc = Cipher(algorithms.ChaCha20(bytes(key), counter.to_bytes(4, "little") + bytes(nonce)), mode=None).encryptor()
    return enc.update(bytes(nbytes))


def keystream_words_reference(seed: bytes, nonce: bytes, n: int, dtype: type[np.unsignedinteger]) -> np.ndarray:
    """``n`` little-endian ring words of the ChaCha20 keystream (OpenSSL via ``cryptography``)."""
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"round nonce must be {NONCE_BYTES} bytes, got {len(nonce)}")
    nbytes = n * np.dtype(dtype).itemsize
    enc = Cipher(algorithms.ChaCha20(seed, b"\0\0\0\0" + nonce), mode=None).encryptor()
    stream = enc.update(bytes(nbytes))
    return np.frombuffer(stream, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)


def _apply(vec: np.ndarray, masks: Sequence[tuple[bytes, int]], nonce: bytes) -> None:
    for seed, sign in masks:
        ks = keystream_words_reference(seed, nonce, vec.size, vec.dtype.type)
        if sign > 0:
            np.add(vec, ks, out=vec)
        else:
            np.subtract(vec, ks, out=vec)


def apply_masks_reference(vec: np.ndarray, masks: Sequence[Any], nonce: bytes) -> None:
    """Add ``sign * PRG(seed)`` of every mask to the ring vector ``vec`` in place (wrapping)."""
    _apply(vec, [(m.seed, m.sign) for m in masks], nonce)


def quantize_and_mask_reference(update: np.ndarray, *, spec: Any, masks: Sequence[Any], nonce: bytes,
                                rounding_seed: int) -> np.ndarray:
    """Reference of :func:`medfl.secagg.masking.quantize_and_mask` (``update`` must already be clipped)."""
    x = np.ascontiguousarray(update, dtype=np.float32).reshape(-1)
    q = encode_reference(x, frac_bits=spec.frac_bits, ring_bits=spec.ring_bits, rounding="stochastic",
                         seed=rounding_seed)
    apply_masks_reference(q, masks, nonce)
    return q


def unmask_and_dequantize_reference(total: np.ndarray, *, spec: Any, masks: Sequence[Any],
                                    nonce: bytes) -> np.ndarray:
    """Reference of :func:`medfl.secagg.masking.unmask_and_dequantize`; ``masks`` carry the signs to *remove*."""
    acc = np.array(total, dtype=spec.dtype, copy=True).reshape(-1)
    _apply(acc, [(m.seed, -m.sign) for m in masks], nonce)
    return decode_reference(np.asarray(acc, dtype=spec.dtype), frac_bits=spec.frac_bits)
