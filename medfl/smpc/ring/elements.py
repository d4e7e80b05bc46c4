"""The ring Z_2^64 of encrypted inference: uniform elements and fixed-point encoding.

Ring elements are ``uint64`` arrays; NumPy's unsigned arithmetic wraps modulo 2^64, which is
exactly the ring's addition and multiplication. Reals are encoded in two's complement fixed
point with ``frac_bits`` fractional bits (16 by default) through :mod:`medfl.native.fixed_point`.
Uniform elements come from :mod:`medfl.csprng` (ChaCha20 keyed from the OS CSPRNG).

References
----------
.. [1] Mohassel and Zhang, "SecureML: A System for Scalable Privacy-Preserving Machine
   Learning", IEEE S&P 2017 (two's complement fixed point in Z_2^k).
"""

from __future__ import annotations

import numpy as np

from medfl import csprng, native

__all__ = ["FRAC_BITS", "RING_BITS", "decode", "encode", "matmul", "uniform"]

RING_BITS = 64
FRAC_BITS = 16


def uniform(shape: tuple[int, ...]) -> np.ndarray:
    """Return uniformly random elements of Z_2^64 with the given shape.

    Parameters
    ----------
    shape : tuple of int
        Shape of the result.

    Returns
    -------
    ndarray of uint64
        Fresh elements from a ChaCha20 keystream under a fresh OS-CSPRNG key.

    Notes
    -----
    Each draw takes one 32-byte key from :func:`medfl.csprng.token_bytes` and expands it with
    :func:`medfl.csprng.expand` (nonce and counter zero); a device that expands the same key
    with the same ChaCha20 (the dealer on a GPU, :mod:`medfl.smpc.dealer.generator`) draws the same
    elements.

    References
    ----------
    .. [1] Nir and Langley, "ChaCha20 and Poly1305 for IETF Protocols", RFC 8439, 2018.
    """
    n = int(np.prod(shape, dtype=np.int64))
    return np.frombuffer(csprng.expand(8 * n, key=csprng.token_bytes(32)), dtype=np.uint64).reshape(shape).copy()


def encode(x: np.ndarray, *, frac_bits: int = FRAC_BITS) -> np.ndarray:
    """Encode reals into Z_2^64 with ``frac_bits`` fractional bits (round to nearest).

    Parameters
    ----------
    x : array_like of float
        Values; converted to float32 as in :func:`medfl.native.encode`.
    frac_bits : int
        Fractional bits.

    Returns
    -------
    ndarray of uint64

    Raises
    ------
    RingOverflowError
        A value does not fit the ring.

    References
    ----------
    .. [1] Mohassel and Zhang, "SecureML", IEEE S&P 2017.
    """
    arr = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    return np.asarray(native.encode(arr, frac_bits=frac_bits, ring_bits=RING_BITS))


def decode(v: np.ndarray, *, frac_bits: int = FRAC_BITS) -> np.ndarray:
    """Decode ring elements (two's complement) to float64 reals.

    Parameters
    ----------
    v : ndarray of uint64
        Ring elements.
    frac_bits : int
        Fractional bits used to encode.

    Returns
    -------
    ndarray of float64

    References
    ----------
    .. [1] Mohassel and Zhang, "SecureML", IEEE S&P 2017.
    """
    return np.asarray(v, dtype=np.uint64).view(np.int64).astype(np.float64) * 2.0**-frac_bits


def matmul(a: np.ndarray, b: np.ndarray, *, out: np.ndarray | None = None, accumulate: bool = False) -> np.ndarray:
    """Return the ring matrix product ``a @ b mod 2^64`` (native kernel when built).

    Parameters
    ----------
    a, b : ndarray of uint64, shapes (m, k) and (k, n)
        Ring matrices.
    out : ndarray of uint64, shape (m, n), optional
        Destination; with ``accumulate`` the product is added to it.
    accumulate : bool
        ``out += a @ b`` instead of ``out = a @ b``.

    Returns
    -------
    ndarray of uint64, shape (m, n)

    References
    ----------
    .. [1] Mohassel and Zhang, "SecureML", IEEE S&P 2017 (ring products of shares).
    """
    return np.asarray(native.ring_matmul(a, b, out=out, accumulate=accumulate))
