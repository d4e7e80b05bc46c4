"""Gaussian noise for DP-SGD from a cryptographically secure source.

By default the noise is Box-Muller over a ChaCha20 keystream with a fresh key from the
OS CSPRNG (:mod:`medfl.csprng`), so an observer of the model cannot predict or replay
the noise. On the host one native kernel (``dp_gaussian_noise``: keystream, transform and
scaling per 16 KiB tile, OpenMP threads) computes it; :func:`_secure_normal` (NumPy) is its
reference and the fallback without medfl._native or with ``MEDFL_NATIVE=reference``. For CUDA
tensors the keystream and the transform run on the device (the native ChaCha20 kernel), the
same stream as on the host for the same key. ``MEDFL_INSECURE_RNG=1``
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

import numpy as np
import torch

from medfl import csprng, envvars

__all__ = ["gaussian", "gaussian_for", "insecure"]

log = logging.getLogger(__name__)

#: most values one draw of :func:`gaussian_for` makes: 16 MiB of float32 noise, and a bound on the
#: float64 temporaries of a GPU draw
_DRAW_MAX = 1 << 22


def insecure() -> bool:
    """Return True when ``MEDFL_INSECURE_RNG=1`` asks for the fast non-cryptographic generator."""
    return envvars.get("MEDFL_INSECURE_RNG", "0") == "1"


def _secure_normal(n: int, *, key: bytes | None = None) -> np.ndarray:
    """Return ``n`` standard normal float64 values by Box-Muller over ChaCha20 bytes [1].

    ``key`` (32 bytes) fixes the stream for tests; by default it is fresh from the OS CSPRNG.
    """
    pairs = (n + 1) // 2
    words = np.frombuffer(csprng.expand(16 * pairs, key=key), dtype="<u8").reshape(pairs, 2)
    u = ((words >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)  # in (0, 1)
    r = np.sqrt(-2.0 * np.log(u[:, 0]))
    theta = 2.0 * math.pi * u[:, 1]
    return np.concatenate([r * np.cos(theta), r * np.sin(theta)])[:n]


def _secure_normal_native(n: int, *, std: float, dtype: torch.dtype, key: bytes | None = None) -> torch.Tensor | None:
    """``std *`` :func:`_secure_normal` from the native CPU kernel, in ``dtype``; None without it.

    float32 and float64 are written by the kernel (computed in double, rounded once); other
    dtypes are computed in float64 and cast, as the reference does.
    """
    from medfl.privacy import kernels

    mod = kernels._module()
    if mod is None or not hasattr(mod, "dp_gaussian_noise"):
        return None
    out = torch.empty(n, dtype=dtype if dtype in (torch.float32, torch.float64) else torch.float64)
    mod.dp_gaussian_noise(csprng.token_bytes(32) if key is None else key, out.numpy(), float(std),
                          torch.get_num_threads())
    return out if out.dtype == dtype else out.to(dtype)


def _cuda_keystream_usable(like: torch.Tensor) -> bool:
    from medfl import native

    if not like.is_cuda:
        return False
    mod = native.native_module()
    return mod is not None and bool(mod.build_info()["cuda"]) and hasattr(mod, "chacha20_keystream_cuda")


def _secure_normal_cuda(n: int, device: torch.device, *, key: bytes | None = None) -> torch.Tensor:
    """:func:`_secure_normal` computed on a CUDA device.

    The same ChaCha20 stream (the native keystream kernel, key from the OS CSPRNG, nonce and
    counter zero) and the same Box-Muller transform in float64: nothing but the key crosses the bus.
    """
    from medfl import native

    pairs = (n + 1) // 2
    k = csprng.token_bytes(32) if key is None else key
    buf = torch.empty(16 * pairs, dtype=torch.uint8, device=device)
    if pairs:
        with torch.cuda.device(device):
            native.native_module().chacha20_keystream_cuda(  # type: ignore[union-attr]
                k, bytes(12), 0, buf.data_ptr(), buf.numel(), torch.cuda.current_stream(device).cuda_stream)
    return _box_muller(buf, n)


def _box_muller(stream: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` normals from a uint8 keystream tensor of 16 bytes per pair, as :func:`_secure_normal`."""
    pairs = stream.numel() // 16
    words = stream.view(torch.int64).view(pairs, 2)  # little-endian 64-bit words, as on the host
    mantissa = (words >> 11) & ((1 << 53) - 1)   # the top 53 bits (logical shift of the signed view)
    u = (mantissa.to(torch.float64) + 0.5) / float(1 << 53)  # in (0, 1)
    r = torch.sqrt(-2.0 * torch.log(u[:, 0]))
    theta = 2.0 * math.pi * u[:, 1]
    return torch.cat([r * torch.cos(theta), r * torch.sin(theta)])[:n]


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
    if _cuda_keystream_usable(like):
        return (_secure_normal_cuda(n, like.device).reshape(shape) * std).to(dtype=like.dtype)
    native = _secure_normal_native(n, std=std, dtype=like.dtype) if like.device.type == "cpu" else None
    if native is not None:
        return native.reshape(shape)
    z = torch.from_numpy(_secure_normal(n)).reshape(shape)
    return (z * std).to(device=like.device, dtype=like.dtype)


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
