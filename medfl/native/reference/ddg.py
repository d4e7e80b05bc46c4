"""NumPy reference of the discrete Gaussian noise kernel (csrc/ddg): CKS algorithm 3 over ChaCha20.

The stream layout is the one csrc/ddg/ddg.h describes: chunks of :data:`CHUNK` elements; chunk
``c``'s pass ``p`` is :data:`PASS_BLOCKS` ChaCha20 blocks of the key with the 12-byte nonce
``c`` (64-bit LE) ``||`` ``p`` (32-bit LE), read as pairs of little-endian 64-bit words, one
candidate per pair; element ``j`` of the chunk is the ``j``-th accepted candidate. Vectorised per
pass: every candidate of a pass is computed at once and the accepted ones are taken in order.
The keystream comes from OpenSSL (``cryptography``), not from the native module.

References
----------
.. [1] C. Canonne, G. Kamath, T. Steinke, "The Discrete Gaussian for Differential Privacy",
   NeurIPS 2020, algorithm 3.
"""

from __future__ import annotations

import math

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

__all__ = ["CHUNK", "PASS_BLOCKS", "candidates_reference", "discrete_gaussian_reference"]

CHUNK = 1024
PASS_BLOCKS = 32
MAX_PASSES = 1 << 16
_INV53 = 1.0 / float(1 << 53)


def candidates_reference(words: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Candidates ``y`` and their accept flags from ``2k`` uint64 words (pairs ``w0, w1``)."""
    t = math.floor(sigma) + 1.0
    s2 = sigma * sigma
    w0, w1 = words[0::2], words[1::2]
    u0 = ((w0 >> np.uint64(11)).astype(np.float64) + 0.5) * _INV53
    vd = np.floor(-t * np.log(u0))
    neg = (w0 & np.uint64(1)) != 0
    d = vd - s2 / t
    u1 = ((w1 >> np.uint64(11)).astype(np.float64) + 0.5) * _INV53
    ok = ~(neg & (vd == 0.0)) & (u1 < np.exp(-(d * d) / (2.0 * s2)))
    v = vd.astype(np.int64)
    return np.where(neg, -v, v), ok


def _pass_words(key: bytes, chunk: int, p: int) -> np.ndarray:
    nonce = chunk.to_bytes(8, "little") + p.to_bytes(4, "little")
    enc = Cipher(algorithms.ChaCha20(bytes(key), b"\0\0\0\0" + nonce), mode=None).encryptor()
    return np.frombuffer(enc.update(bytes(64 * PASS_BLOCKS)), dtype="<u8").astype(np.uint64)


def discrete_gaussian_reference(n: int, sigma: float, key: bytes) -> np.ndarray:
    """``n`` samples of ``N_Z(0, sigma^2)`` as int64, the numbers the native kernel adds.

    Raises
    ------
    ValueError
        ``sigma`` outside [0.5, 1e12] or ``key`` not 32 bytes.
    """
    if not (math.isfinite(sigma) and 0.5 <= sigma <= 1e12):
        raise ValueError(f"sigma must be a finite number in [0.5, 1e12], got {sigma}")
    if len(key) != 32:
        raise ValueError(f"key: expected 32 bytes, got {len(key)}")
    out = np.empty(n, dtype=np.int64)
    for c, begin in enumerate(range(0, n, CHUNK)):
        want = min(CHUNK, n - begin)
        got: list[np.ndarray] = []
        have = 0
        for p in range(MAX_PASSES):
            y, ok = candidates_reference(_pass_words(key, c, p), sigma)
            got.append(y[ok])
            have += int(ok.sum())
            if have >= want:
                break
        else:
            raise ValueError(f"chunk {c} ran out of candidates (sigma={sigma})")
        out[begin:begin + want] = np.concatenate(got)[:want]
    return out
