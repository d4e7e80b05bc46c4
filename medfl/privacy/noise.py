"""Gaussian noise for DP-SGD from a cryptographically secure source.

By default the noise is Box-Muller over a ChaCha20 keystream with a fresh key from the
OS CSPRNG (:mod:`medfl.csprng`), so an observer of the model cannot predict or replay
the noise. :mod:`medfl.native.noise` computes it: on the host one native kernel
(``dp_gaussian_noise``: keystream, transform and scaling per 16 KiB tile, OpenMP threads), with
:func:`medfl.native.reference.secure_normal_reference` (NumPy) as its reference and the fallback
without medfl._native or with ``MEDFL_NATIVE=reference``; for CUDA tensors the keystream and the
transform run on the device (the native ChaCha20 kernel), the same stream as on the host for the
same key. ``MEDFL_INSECURE_RNG=1``
switches to torch's fast generator (seeded from the CSPRNG) for experiments and logs a
warning on every call.

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
from collections.abc import Iterator, Sequence

import torch

from medfl import csprng, envvars
from medfl.native import noise as native_noise

__all__ = ["gaussian", "gaussian_for", "insecure"]

log = logging.getLogger(__name__)

#: most values one draw of :func:`gaussian_for` makes: 16 MiB of float32 noise, and a bound on the
#: float64 temporaries of a GPU draw
_DRAW_MAX = 1 << 22


def insecure() -> bool:
    """Return True when ``MEDFL_INSECURE_RNG=1`` asks for the fast non-cryptographic generator."""
    return envvars.get("MEDFL_INSECURE_RNG", "0") == "1"


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
    return native_noise.gaussian_noise(n, std=std, like=like).reshape(shape)


def gaussian_for(tensors: Sequence[torch.Tensor], *, std: float) -> Iterator[torch.Tensor]:
    """Yield ``N(0, std^2)`` noise shaped like each of ``tensors`` in turn (with its dtype and device).

    Consecutive tensors that share a device and dtype get slices of one draw of
    :func:`gaussian` (one key, one keystream, one transform) of at most ``_DRAW_MAX`` values
    instead of a draw each: a model's 60-odd parameter tensors then cost a few kernels on a GPU,
    not hundreds. A draw is made when its first tensor's noise is asked for, so only one draw is
    held here at a time. The slices of one draw are independent like separate draws.

    Parameters
    ----------
    tensors : sequence of torch.Tensor
        What the noise is for (a model's parameters).
    std : float
        Standard deviation, ``noise_multiplier * max_grad_norm``.

    Raises
    ------
    ValueError
        ``std`` is negative or not finite (at the call, before any noise is drawn).
    """
    if not (std >= 0 and math.isfinite(std)):
        raise ValueError(f"std={std!r} must be finite and >= 0")
    return _draws(list(tensors), std)


def _draws(tensors: list[torch.Tensor], std: float) -> Iterator[torch.Tensor]:
    i = 0
    while i < len(tensors):
        first = tensors[i]
        j, size = i, 0
        while (j < len(tensors) and tensors[j].device == first.device and tensors[j].dtype == first.dtype
               and (j == i or size + tensors[j].numel() <= _DRAW_MAX)):
            size += tensors[j].numel()
            j += 1
        flat = gaussian((size,), std=std, like=first)
        for t, piece in zip(tensors[i:j], flat.split([t.numel() for t in tensors[i:j]]), strict=True):
            yield piece.view(t.shape)
        del flat
        i = j
