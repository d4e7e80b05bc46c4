"""DP Gaussian noise kernels: the C++ ``dp_gaussian_noise`` on the host, the ChaCha20 kernel + torch on a GPU.

Every path computes :func:`medfl.native.reference.secure_normal_reference`'s numbers for the
same key (Box-Muller over the ChaCha20 keystream, in float64): on the host one native kernel
does keystream, transform and scaling per 16 KiB tile (OpenMP threads); for CUDA tensors the
keystream is generated on the device and transformed there by torch, so nothing but the key
crosses the bus; without either, the NumPy reference runs. torch is imported with this module.

References
----------
.. [1] G. E. P. Box and M. E. Muller, "A note on the generation of random normal deviates",
   Ann. Math. Statist. 29(2), 1958.
"""

from __future__ import annotations

import math

import torch

from medfl import csprng
from medfl.native import backend
from medfl.native.reference.noise import secure_normal_reference

__all__ = ["box_muller", "dp_gaussian_noise", "gaussian_noise", "secure_normal_cuda"]


def gaussian_noise(n: int, *, std: float, like: torch.Tensor) -> torch.Tensor:
    """Return ``n`` values of ``N(0, std^2)`` noise, flat, with the dtype and device of ``like``.

    The key is fresh from the OS CSPRNG. CUDA tensors use the device keystream when
    ``medfl._native`` has CUDA kernels, host tensors the C++ kernel when built; otherwise the
    NumPy reference (then moved to ``like``'s device).

    References
    ----------
    .. [1] Box and Muller 1958.
    """
    if _cuda_keystream_usable(like):
        return (secure_normal_cuda(n, like.device) * std).to(dtype=like.dtype)
    host = dp_gaussian_noise(n, std=std, dtype=like.dtype) if like.device.type == "cpu" else None
    if host is not None:
        return host
    z = torch.from_numpy(secure_normal_reference(n))
    return (z * std).to(device=like.device, dtype=like.dtype)


def dp_gaussian_noise(n: int, *, std: float, dtype: torch.dtype, key: bytes | None = None) -> torch.Tensor | None:
    """``std *`` :func:`secure_normal_reference` from the native CPU kernel, in ``dtype``; None without it.

    float32 and float64 are written by the kernel (computed in double, rounded once); other
    dtypes are computed in float64 and cast, as the reference does.
    """
    mod = backend.dp_kernels()
    if mod is None or not hasattr(mod, "dp_gaussian_noise"):
        return None
    out = torch.empty(n, dtype=dtype if dtype in (torch.float32, torch.float64) else torch.float64)
    mod.dp_gaussian_noise(csprng.token_bytes(32) if key is None else key, out.numpy(), float(std),
                          torch.get_num_threads())
    return out if out.dtype == dtype else out.to(dtype)


def _cuda_keystream_usable(like: torch.Tensor) -> bool:
    if not like.is_cuda:
        return False
    mod = backend.native_module()
    return mod is not None and bool(mod.build_info()["cuda"]) and hasattr(mod, "chacha20_keystream_cuda")


def secure_normal_cuda(n: int, device: torch.device, *, key: bytes | None = None) -> torch.Tensor:
    """:func:`secure_normal_reference` computed on a CUDA device (float64).

    The same ChaCha20 stream (the native keystream kernel, key from the OS CSPRNG, nonce and
    counter zero) and the same Box-Muller transform in float64: nothing but the key crosses the bus.
    """
    pairs = (n + 1) // 2
    k = csprng.token_bytes(32) if key is None else key
    buf = torch.empty(16 * pairs, dtype=torch.uint8, device=device)
    if pairs:
        with torch.cuda.device(device):
            backend.module().chacha20_keystream_cuda(
                k, bytes(12), 0, buf.data_ptr(), buf.numel(), torch.cuda.current_stream(device).cuda_stream)
    return box_muller(buf, n)


def box_muller(stream: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` normals from a uint8 keystream tensor of 16 bytes per pair, as :func:`secure_normal_reference`."""
    pairs = stream.numel() // 16
    words = stream.view(torch.int64).view(pairs, 2)  # little-endian 64-bit words, as on the host
    mantissa = (words >> 11) & ((1 << 53) - 1)   # the top 53 bits (logical shift of the signed view)
    u = (mantissa.to(torch.float64) + 0.5) / float(1 << 53)  # in (0, 1)
    r = torch.sqrt(-2.0 * torch.log(u[:, 0]))
    theta = 2.0 * math.pi * u[:, 1]
    return torch.cat([r * torch.cos(theta), r * torch.sin(theta)])[:n]
