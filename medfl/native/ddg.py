"""Discrete Gaussian noise into a ring vector (csrc/ddg): the C++ kernel, CUDA for device arrays, else the reference.

:func:`add_discrete_gaussian` adds ``N_Z(0, sigma^2)`` samples to a uint32/uint64 ring vector in
place, wrapping mod 2^k, with the sampler and stream layout of csrc/ddg/ddg.h; every path gives
:func:`medfl.native.reference.ddg.discrete_gaussian_reference`'s numbers for the same key (up to
the last ulp of the libm's log/exp, which moves a sample with probability about 1e-16).

References
----------
.. [1] Canonne, Kamath and Steinke, NeurIPS 2020, algorithm 3.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from medfl import csprng
from medfl.native import backend, cuda
from medfl.native.reference.ddg import discrete_gaussian_reference

__all__ = ["add_discrete_gaussian"]


def add_discrete_gaussian(vec: Any, *, sigma: float, key: bytes | None = None, threads: int = 0) -> None:
    """Add ``N_Z(0, sigma^2)`` samples to the ring vector ``vec`` in place (mod 2^k).

    Parameters
    ----------
    vec : ndarray (or CUDA array) of uint32 or uint64
        The ring vector (the quantized update, before its masks).
    sigma : float
        Standard deviation parameter in the integer domain, in [0.5, 1e12].
    key : bytes, optional
        32-byte ChaCha20 key; fresh from the OS CSPRNG by default (give one only in tests).
    threads : int
        OpenMP threads for the CPU kernel (0: one per core).

    References
    ----------
    .. [1] Canonne, Kamath and Steinke 2020, algorithm 3.
    """
    k = csprng.token_bytes(32) if key is None else key
    if backend.is_device_array(vec):
        backend.active_backend(device=True)
        ptr, dtype, shape, stream, ctx = cuda.info(vec, "vec")
        if dtype not in ("uint32", "uint64"):
            raise ValueError(f"vec: expected dtype uint32 or uint64, got {dtype}")
        with ctx:
            backend.module().add_discrete_gaussian_cuda(ptr, 32 if dtype == "uint32" else 64, math.prod(shape),
                                                        float(sigma), k, stream)
        return
    if vec.dtype not in (np.uint32, np.uint64):
        raise ValueError(f"vec: expected dtype uint32 or uint64, got {vec.dtype}")
    mod = backend.native_module()
    if backend.active_backend() == "reference" or mod is None or not hasattr(mod, "add_discrete_gaussian") \
            or not vec.flags.c_contiguous:
        noise = discrete_gaussian_reference(vec.size, float(sigma), k).astype(vec.dtype)
        flat = vec.reshape(-1) if vec.flags.c_contiguous else vec
        np.add(flat, noise.reshape(flat.shape), out=flat)
        return
    if threads <= 0:
        threads = os.cpu_count() or 1
    mod.add_discrete_gaussian(vec.reshape(-1), float(sigma), k, int(threads))
