"""ChaCha20 keystream (RFC 8439), the pseudorandom generator of secagg masks and of the dealer's draws.

The native kernel (``csrc/common/chacha20_cpu.cpp``) is used when ``medfl._native`` is built and
``MEDFL_NATIVE`` does not force the reference; the reference is OpenSSL's ChaCha20 through
``cryptography`` (:mod:`medfl.native.reference.masking`). :func:`keystream` fills a device
array with the stream of key, nonce 0 and counter 0 on the caller's CUDA stream.

References
----------
.. [1] Nir and Langley, "ChaCha20 and Poly1305 for IETF Protocols", RFC 8439, 2018, sections
   2.3 (block function) and 2.4 (keystream, 32-bit block counter).
"""

from __future__ import annotations

import math
from typing import Any

from medfl.native import backend, checks, cuda
from medfl.native.checks import BLOCK_BYTES, KEY_BYTES, MAX_COUNTER, NONCE_BYTES
from medfl.native.reference.masking import chacha20_keystream_reference

__all__ = ["BLOCK_BYTES", "KEY_BYTES", "MAX_COUNTER", "NONCE_BYTES", "chacha20_keystream", "keystream"]


def chacha20_keystream(key: bytes, nonce: bytes, counter: int, nbytes: int) -> bytes:
    """Return ``nbytes`` of the ChaCha20 keystream of ``key`` and ``nonce`` from block ``counter``.

    Parameters
    ----------
    key : bytes
        32-byte key.
    nonce : bytes
        12-byte nonce.
    counter : int
        Initial 32-bit block counter.
    nbytes : int
        Number of keystream bytes; the blocks used must not pass counter ``2^32 - 1``.

    Returns
    -------
    bytes
        The keystream (the ciphertext of ``nbytes`` zero bytes).

    Raises
    ------
    ValueError
        On a bad key or nonce length, a negative length, or a counter that would wrap.

    References
    ----------
    .. [1] RFC 8439, sections 2.3 and 2.4.
    """
    counter, nbytes = checks.check_chacha20(key, nonce, counter, nbytes)
    if backend.active_backend() == "reference":
        return chacha20_keystream_reference(key, nonce, counter, nbytes)
    mod = backend.module()
    return bytes(mod.chacha20_keystream(bytes(key), bytes(nonce), counter, nbytes))


def keystream(key: bytes, out: Any) -> Any:
    """Fill the contiguous device array ``out`` with the ChaCha20 keystream of ``key`` (nonce 0, counter 0).

    The bytes of :func:`medfl.csprng.expand` under the same key (RFC 8439), produced on the
    device, on its current stream.

    Parameters
    ----------
    key : bytes
        32-byte key.
    out : torch CUDA tensor or CuPy array of uint8, uint64 or int64
        Filled in place (at most 2^32 blocks of 64 bytes).

    Returns
    -------
    array
        ``out``.

    References
    ----------
    .. [1] RFC 8439, section 2.4.
    """
    if not isinstance(key, bytes) or len(key) != 32:
        size = len(key) if isinstance(key, bytes | bytearray) else "?"
        raise ValueError(f"key must be 32 bytes, got {type(key).__name__} of length {size}")
    ptr, dt, shape, stream, ctx = cuda.info(out, "out")
    sizes = {"uint8": 1, "int64": 8, "uint64": 8}
    if dt not in sizes:
        raise TypeError(f"out must be a uint8, uint64 or int64 device array, got {dt}{shape}")
    nbytes = math.prod(shape) * sizes[dt]
    if nbytes > 64 * 2**32:
        raise ValueError(f"{nbytes} bytes is past one ChaCha20 stream (2^32 blocks of 64 bytes); draw in parts")
    with ctx:
        backend.module().chacha20_keystream_cuda(key, bytes(12), 0, ptr, nbytes, stream)
    return out
