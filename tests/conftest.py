"""Shared test helpers: ``cuda_skip_reason`` and the ``cuda`` fixture for ``@pytest.mark.gpu`` tests."""

from __future__ import annotations

import pytest


def cuda_skip_reason() -> str | None:
    """Why CUDA kernels cannot run here (no torch CUDA, no CUDA build, no device), or None if they can."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "torch.cuda is not available (no GPU or a CPU-only torch build)"
    try:
        from medfl import _native
    except ImportError:
        return "medfl._native is not built"
    if not _native.build_info()["cuda"]:
        return "medfl._native was built without CUDA (no nvcc at build time, or MEDFL_CUDA=0)"
    if _native.cuda_device_count() == 0:
        return "medfl._native sees no CUDA device"
    return None


@pytest.fixture
def cuda() -> str:
    """Skip the test cleanly unless the CUDA kernels can run; returns the device name."""
    reason = cuda_skip_reason()
    if reason:
        pytest.skip(reason)
    return "cuda"
