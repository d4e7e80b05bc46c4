"""ChaCha20 keystream (RFC 8439), the pseudorandom generator that expands secagg mask seeds.

The native kernel (``csrc/secagg``) is used when ``medfl._native`` is built and
``MEDFL_NATIVE`` does not force the reference; the reference is OpenSSL's ChaCha20 through
``cryptography`` (its 16-byte nonce is the 4-byte little-endian block counter followed by the
12-byte RFC 8439 nonce).

References
----------
.. [1] Nir and Langley, "ChaCha20 and Poly1305 for IETF Protocols", RFC 8439, 2018, sections
   2.3 (block function) and 2.4 (keystream, 32-bit block counter).
"""

from __future__ import annotations

import operator

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

__all__ = ["BLOCK_BYTES", "KEY_BYTES", "MAX_COUNTER", "NONCE_BYTES", "chacha20_keystream",
           "chacha20_keystream_reference"]

KEY_BYTES = 32
NONCE_BYTES = 12
BLOCK_BYTES = 64
MAX_COUNTER = 2**32 - 1


def _check(key: bytes, nonce: bytes, counter: int, nbytes: int) -> tuple[int, int]:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
        raise ValueError(f"ChaCha20 key must be {KEY_BYTES} bytes, got {len(key)}; pass a 32-byte seed")
    if not isinstance(nonce, bytes | bytearray) or len(nonce) != NONCE_BYTES:
        raise ValueError(f"ChaCha20 nonce must be {NONCE_BYTES} bytes (RFC 8439), got {len(nonce)}")
    counter = operator.index(counter)
    nbytes = operator.index(nbytes)
    if nbytes < 0:
        raise ValueError(f"nbytes must be >= 0, got {nbytes}")
    if not 0 <= counter <= MAX_COUNTER:
        raise ValueError(f"block counter must be in [0, 2^32 - 1], got {counter}")
    blocks = -(-nbytes // BLOCK_BYTES)
    if blocks and counter + blocks - 1 > MAX_COUNTER:
        raise ValueError(f"counter {counter} + {blocks} blocks of keystream exceeds the 32-bit block counter "
                         f"(RFC 8439 forbids wrapping); ask for at most {(MAX_COUNTER - counter + 1) * 64} bytes")
    return counter, nbytes


def chacha20_keystream_reference(key: bytes, nonce: bytes, counter: int, nbytes: int) -> bytes:
    """Reference of :func:`chacha20_keystream` (OpenSSL through ``cryptography``)."""
    counter, nbytes = _check(key, nonce, counter, nbytes)
    enc = Cipher(algorithms.ChaCha20(bytes(key), counter.to_bytes(4, "little") + bytes(nonce)), mode=None).encryptor()
    return enc.update(bytes(nbytes))


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
    from medfl import native

    counter, nbytes = _check(key, nonce, counter, nbytes)
    if native.active_backend() == "reference":
        return chacha20_keystream_reference(key, nonce, counter, nbytes)
    mod = native.native_module()
    return bytes(mod.chacha20_keystream(bytes(key), bytes(nonce), counter, nbytes))  # type: ignore[union-attr]
