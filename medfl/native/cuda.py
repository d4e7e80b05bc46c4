"""Device arrays (torch CUDA tensors, CuPy arrays): their pointers, the caller's stream, allocation.

The CUDA kernels take raw pointers and run on the stream current for the array's device; these
helpers get both without copying and refuse arrays the kernels cannot read (non-contiguous,
host-resident, on two devices). torch and CuPy are imported only when such an array is seen.
"""

from __future__ import annotations

from typing import Any

__all__ = ["empty", "host_copy", "info", "same_device"]


def info(a: Any, name: str) -> tuple[int, str, tuple[int, ...], int, Any]:
    """Return (pointer, dtype name, shape, current stream handle, device context) of the device array ``a``.

    Raises
    ------
    ValueError
        ``a`` is a host tensor or not contiguous.
    """
    if hasattr(a, "data_ptr") and hasattr(a, "is_cuda"):  # torch
        import torch

        if not a.is_cuda:
            raise ValueError(f"{name} is a torch tensor on {a.device}, expected a CUDA tensor")
        if not a.is_contiguous():
            raise ValueError(f"{name}: CUDA tensors must be contiguous (got strides {tuple(a.stride())}); call "
                             ".contiguous() first")
        stream = torch.cuda.current_stream(a.device).cuda_stream
        return (a.data_ptr(), str(a.dtype).replace("torch.", ""), tuple(a.shape), int(stream),
                torch.cuda.device(a.device))
    import cupy

    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: CuPy arrays must be C-contiguous (got strides {a.strides}); call "
                         "cupy.ascontiguousarray first")
    return a.data.ptr, a.dtype.name, tuple(a.shape), int(cupy.cuda.get_current_stream().ptr), a.device


def empty(like: Any, shape: tuple[int, ...], dtype: str) -> Any:
    """A new uninitialised array of ``shape`` and ``dtype`` (a NumPy dtype name) on ``like``'s device."""
    if hasattr(like, "is_cuda"):
        import torch

        return torch.empty(shape, dtype=getattr(torch, dtype), device=like.device)
    import cupy

    with like.device:
        return cupy.empty(shape, dtype=dtype)


def same_device(a: Any, b: Any) -> None:
    """Refuse two arrays on different devices."""
    if str(getattr(a, "device", "")) != str(getattr(b, "device", "")):
        raise ValueError(f"arrays are on different devices: {a.device} and {b.device}")


def host_copy(x: Any) -> Any:
    """A NumPy copy of the device array ``x`` (to name an offending value in an error)."""
    return x.cpu().numpy() if hasattr(x, "cpu") else x.get()
