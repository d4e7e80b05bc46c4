"""The backend choice: load ``medfl._native`` once, honour ``MEDFL_NATIVE``, tell device arrays from host ones.

The choice is made once per process. ``MEDFL_NATIVE=cuda|cpu|reference`` forces it (see
:mod:`medfl.envvars`); the compiled module is imported on first use only, so a process forced to
the reference never loads it. The dispatch modules of :mod:`medfl.native` look these functions up
on this module at every call (tests replace them to run the CUDA plumbing on host memory).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from medfl import envvars

__all__ = ["CHOICES", "active_backend", "backend_of", "dp_kernels", "forced", "is_device_array", "module",
           "native_module"]

log = logging.getLogger(__name__)
CHOICES = ("cuda", "cpu", "reference")


@functools.cache
def native_module() -> Any | None:
    """The compiled ``medfl._native`` module, or None if it is not built."""
    try:
        from medfl import _native
    except ImportError as exc:
        log.warning("medfl._native is not built (%s); using the NumPy reference kernels. Run 'make install'.", exc)
        return None
    return _native


def module() -> Any:
    """:func:`native_module` where the backend choice already said ``cpu`` or ``cuda`` (so it is built)."""
    mod = native_module()
    if mod is None:
        raise RuntimeError("medfl._native is not built; run 'make install'")
    return mod


@functools.cache
def forced() -> str | None:
    """The backend ``MEDFL_NATIVE`` forces (``cuda``, ``cpu`` or ``reference``), or None.

    Raises
    ------
    ValueError
        ``MEDFL_NATIVE`` holds another value.
    """
    value = envvars.get("MEDFL_NATIVE")
    if value is None:
        return None
    value = value.strip().lower()
    if value not in CHOICES:
        raise ValueError(f"MEDFL_NATIVE={value!r}; use one of {', '.join(CHOICES)} or unset it")
    return value


def is_device_array(x: Any) -> bool:
    """True for a torch CUDA tensor or a CuPy array (anything with ``__cuda_array_interface__``)."""
    if hasattr(x, "__cuda_array_interface__"):
        return True
    return bool(getattr(x, "is_cuda", False))


def active_backend(*, device: bool = False) -> str:
    """Name of the backend used for host (or, with ``device=True``, device) arrays.

    Raises
    ------
    ValueError
        ``MEDFL_NATIVE`` forces a backend that cannot take this kind of array.
    RuntimeError
        A device array without a CUDA build, or ``MEDFL_NATIVE=cpu`` without a build.
    """
    choice = forced()
    if device:
        if choice in ("cpu", "reference"):
            raise ValueError(f"MEDFL_NATIVE={choice} but a GPU array was given; move it to the host or unset "
                             "MEDFL_NATIVE")
        mod = native_module()
        if mod is None or not mod.build_info()["cuda"]:
            raise RuntimeError("a GPU array was given but medfl._native was built without CUDA; rebuild with "
                               "nvcc on PATH (MEDFL_CUDA=1 make install)")
        return "cuda"
    if choice == "cuda":
        raise ValueError("MEDFL_NATIVE=cuda but a host (NumPy) array was given; pass a CUDA tensor or unset it")
    if choice == "reference" or native_module() is None:
        if choice == "cpu":
            raise RuntimeError("MEDFL_NATIVE=cpu but medfl._native is not built; run 'make install'")
        return "reference"
    return "cpu"


def backend_of(x: Any) -> str:
    """:func:`active_backend` for the kind of array ``x`` is."""
    return active_backend(device=is_device_array(x))


@functools.cache
def dp_kernels() -> Any | None:
    """``medfl._native`` if it has the DP kernels (csrc/privacy) and ``MEDFL_NATIVE`` is not ``reference``.

    The DP kernels follow only the ``reference`` forcing (they take torch tensors of any device
    and fall back to torch ops per call), as they always have.
    """
    if (envvars.get("MEDFL_NATIVE") or "").strip().lower() == "reference":
        return None
    mod = native_module()
    if mod is None or not hasattr(mod, "dp_row_sqnorms"):
        return None
    return mod
