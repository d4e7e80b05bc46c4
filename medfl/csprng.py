"""The one source of secret randomness: mask seeds, Shamir coefficients, triples, DP noise seeds.

Everything secret in medfl draws from here: bytes come from the operating system's CSPRNG
(``os.urandom``, i.e. ``getrandom(2)``), and long streams are expanded from a fresh 32-byte key
with ChaCha20 (RFC 8439). Nothing here uses ``random``, ``np.random`` or torch's generators.

References
----------
.. [1] Nir and Langley, "ChaCha20 and Poly1305 for IETF Protocols", RFC 8439, 2018.
.. [2] NIST SP 800-90A Rev. 1 (deterministic random bit generators seeded from an entropy source).
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

__all__ = ["expand", "seed64", "token_bytes"]


def token_bytes(n: int) -> bytes:
    """Return ``n`` bytes from the OS CSPRNG.

    Parameters
    ----------
    n : int
        Number of bytes, >= 0.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return os.urandom(n)


def seed64() -> int:
    """Return a uniformly random 64-bit integer from the OS CSPRNG (e.g. a rounding seed)."""
    return int.from_bytes(os.urandom(8), "little")


def expand(nbytes: int, *, key: bytes | None = None) -> bytes:
    """Return ``nbytes`` pseudorandom bytes: the ChaCha20 keystream of ``key`` (fresh if None).

    Parameters
    ----------
    nbytes : int
        Length of the stream.
    key : bytes, optional
        32-byte key; a fresh one from the OS CSPRNG when omitted. Nonce and counter are zero,
        so a key must never be reused for two different purposes.
    """
    if nbytes < 0:
        raise ValueError(f"nbytes must be >= 0, got {nbytes}")
    k = os.urandom(32) if key is None else key
    if len(k) != 32:
        raise ValueError(f"key must be 32 bytes, got {len(k)}")
    enc = Cipher(algorithms.ChaCha20(k, bytes(16)), mode=None).encryptor()
    return enc.update(bytes(nbytes))
