"""Gaussian noise for DP-SGD from a cryptographically secure source.

By default the noise is Box-Muller over a ChaCha20 keystream with a fresh key from the
OS CSPRNG (:mod:`medfl.csprng`), so an observer of the model cannot predict or replay
the noise. ``MEDFL_INSECURE_RNG=1`` switches to torch's fast generator (seeded from the
CSPRNG) for experiments and logs a warning on every call.

References
----------
.. [1] G. E. P. Box and M. E. Muller, "A note on the generation of random normal
   deviates", Ann. Math. Statist. 29(2), 1958.
.. [2] M. Abadi et al., "Deep learning with differential privacy", CCS 2016 (noise
   ``N(0, sigma^2 C^2 I)`` added to the clipped sum).
.. [3] I. Mironov, "On significance of the least significant bits for differential
   privacy", CCS 2012 (floating-point caveats of sampled noise).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from medfl import csprng, envvars

__all__ = ["gaussian", "insecure"]

log = logging.getLogger(__name__)


def insecure() -> bool:
    """Return True when ``MEDFL_INSECURE_RNG=1`` asks for the fast non-cryptographic generator."""
    return envvars.get("MEDFL_INSECURE_RNG", "0") == "1"


def _secure_normal(n: int) -> np.ndarray:
    """Return ``n`` standard normal float64 values by Box-Muller over ChaCha20 bytes [1]."""
    pairs = (n + 1) // 2
    words = np.frombuffer(csprng.expand(16 * pairs), dtype="<u8").reshape(pairs, 2)
    u = ((words >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)  # in (0, 1)
    r = np.sqrt(-2.0 * np.log(u[:, 0]))
    theta = 2.0 * math.pi * u[:, 1]
    return np.concatenate([r * np.cos(theta), r * np.sin(theta)])[:n]


def gaussian(shape: torch.Size | tuple[int, ...], *, std: float, like: torch.Tensor) -> torch.Tensor:
    """Return ``N(0, std^2)`` noise of ``shape`` with the dtype and device of ``like``.

    Parameters
    ----------
    shape : tuple of int
        Shape of the noise.
    std : float
        Standard deviation, ``noise_multiplier * max_grad_norm`` in DP-SGD [2].
    like : torch.Tensor
        Tensor whose dtype and device the noise takes.

    Returns
    -------
    torch.Tensor
        The noise.

    References
    ----------
    Box and Muller 1958; Abadi et al. 2016 (module docstring).
    """
    if not (std >= 0 and math.isfinite(std)):
        raise ValueError(f"std={std!r} must be finite and >= 0")
    n = math.prod(shape)
    if insecure():
        log.warning("MEDFL_INSECURE_RNG=1: DP noise comes from a non-cryptographic generator; experiments only")
        gen = torch.Generator(device=like.device).manual_seed(csprng.seed64() >> 1)
        return torch.randn(shape, generator=gen, device=like.device, dtype=like.dtype) * std
    z = torch.from_numpy(_secure_normal(n)).reshape(shape)
    return (z * std).to(device=like.device, dtype=like.dtype)
