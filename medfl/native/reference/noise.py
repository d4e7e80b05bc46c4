"""NumPy reference of the DP noise kernels: Box-Muller over a ChaCha20 keystream.

The stream is :func:`medfl.csprng.expand` of a 32-byte key (RFC 8439, nonce and counter 0), read
as pairs of little-endian 64-bit words; each word's top 53 bits give ``u = (w + 0.5) / 2^53`` in
(0, 1), and a pair gives ``r cos(theta)``, ``r sin(theta)`` with ``r = sqrt(-2 ln u_0)`` and
``theta = 2 pi u_1``, in float64. The C++ kernel (``dp_gaussian_noise``) and the CUDA path of
:mod:`medfl.native.noise` compute the same numbers (up to the libm's last ulp).

References
----------
.. [1] G. E. P. Box and M. E. Muller, "A note on the generation of random normal deviates",
   Ann. Math. Statist. 29(2), 1958.
"""

from __future__ import annotations

import math

import numpy as np

from medfl import csprng

__all__ = ["secure_normal_reference"]


def secure_normal_reference(n: int, *, key: bytes | None = None) -> np.ndarray:
    """Return ``n`` standard normal float64 values by Box-Muller over ChaCha20 bytes [1].

    ``key`` (32 bytes) fixes the stream for tests; by default it is fresh from the OS CSPRNG.
    """
    pairs = (n + 1) // 2
    words = np.frombuffer(csprng.expand(16 * pairs, key=key), dtype="<u8").reshape(pairs, 2)
    u = ((words >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)  # in (0, 1)
    r = np.sqrt(-2.0 * np.log(u[:, 0]))
    theta = 2.0 * math.pi * u[:, 1]
    return np.concatenate([r * np.cos(theta), r * np.sin(theta)])[:n]
