"""Native kernels of per-sample clipping (csrc/privacy) on torch tensors.

Each function takes and returns torch tensors. Host tensors go to the C++ kernels (OpenMP with
torch's thread count, SIMD) as zero-copy NumPy views; CUDA tensors go to the CUDA kernels on
torch's current stream; anything else (other dtypes, ``MEDFL_NATIVE=reference``, a module built
without the kernel) runs the ``*_reference`` torch code of :mod:`medfl.native.reference.clipping`,
which is also what the tests compare the kernels against. Inputs that are not contiguous are
copied first (the result is the same).

- :func:`row_sqnorms`: per-sample squared norms of (B, ...) per-sample gradients, in float64;
- :func:`clip_factors`: per-sample norms and clip factors ``min(1, C / (norm + 1e-6))`` from
  per-layer squared norms, refusing non-finite norms (Abadi et al., CCS 2016);
- :func:`clipped_sum`: ``sum_b c_b x_b``, the clipped sum of per-sample gradients;
- :func:`group_norm_affine`: per-sample GroupNorm weight and bias gradients from the layer's
  input and output gradient, without materialising the normalised input.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch
from torch import Tensor

from medfl.native import backend as _backend
from medfl.native.reference.clipping import (
    check_group_norm,
    check_norms,
    clip_factors_reference,
    clipped_sum_reference,
    group_norm_affine_reference,
    row_sqnorms_reference,
)

__all__ = ["backend", "clip_factors", "clipped_sum", "group_norm_affine", "group_norm_affine_sq", "row_sqnorms"]

log = logging.getLogger(__name__)
_FLOATS = (torch.float32, torch.float64)


@functools.cache
def _has_cuda() -> bool:
    mod = _backend.dp_kernels()
    if mod is None or not mod.build_info()["cuda"]:
        log.warning("medfl._native has no CUDA kernels; per-sample clipping on the GPU uses torch ops "
                    "(rebuild with MEDFL_CUDA=1 make install)")
        return False
    return True


def backend(*tensors: Tensor) -> str:
    """``"cuda"``, ``"cpu"`` or ``"reference"``: where a kernel on these tensors runs."""
    if _backend.dp_kernels() is None or any(t.dtype not in _FLOATS for t in tensors):
        return "reference"
    if tensors and tensors[0].is_cuda:
        return "cuda" if _has_cuda() else "reference"
    return "cpu"


def _native() -> Any:
    mod = _backend.dp_kernels()
    if mod is None:  # backend() said "cpu" or "cuda", so the module is there
        raise RuntimeError("medfl._native disappeared")
    return mod


def _stream(t: Tensor) -> int:
    return int(torch.cuda.current_stream(t.device).cuda_stream)


def _dtype(t: Tensor) -> str:
    return "float32" if t.dtype == torch.float32 else "float64"



# ---------------------------------------------------------------------------------------------- #
# row_sqnorms


def row_sqnorms(x: Tensor) -> Tensor:
    """Per-sample squared norms of ``x`` (B, ...) as a float64 (B,) tensor."""
    if x.dim() < 1:
        raise ValueError("row_sqnorms: x must have a batch dimension")
    where = backend(x)
    if where == "reference" or x.numel() == 0:
        return row_sqnorms_reference(x)
    flat = x.detach().reshape(x.shape[0], -1).contiguous()
    out = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    mod = _native()
    if where == "cuda":
        mod.dp_row_sqnorms_cuda(_dtype(flat), flat.data_ptr(), flat.shape[0], flat.shape[1], out.data_ptr(),
                                _stream(flat))
    else:
        mod.dp_row_sqnorms(flat.numpy(), out.numpy(), torch.get_num_threads())
    return out


# ---------------------------------------------------------------------------------------------- #
# clip_factors


def clip_factors(sq: Tensor, max_norm: float) -> tuple[Tensor, Tensor]:
    """Per-sample norms and clip factors from (L, B) per-layer squared norms (float64 out).

    Raises
    ------
    NonFiniteError
        If any per-sample norm is NaN or infinite.
    ValueError
        If ``max_norm`` is not positive or ``sq`` is not 2-D.
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm={max_norm!r} must be > 0")
    if sq.dim() != 2:
        raise ValueError(f"clip_factors: sq must be (layers, batch), got shape {tuple(sq.shape)}")
    sq = sq.detach().to(torch.float64).contiguous()
    where = backend(sq)
    if where == "reference":
        return clip_factors_reference(sq, max_norm)
    norms = torch.empty(sq.shape[1], dtype=torch.float64, device=sq.device)
    factors = torch.empty_like(norms)
    mod = _native()
    if where == "cuda":
        bad_t = torch.empty(1, dtype=torch.int32, device=sq.device)
        mod.dp_clip_factors_cuda(sq.data_ptr(), sq.shape[0], sq.shape[1], float(max_norm), norms.data_ptr(),
                                 factors.data_ptr(), bad_t.data_ptr(), _stream(sq))
        bad = int(bad_t.item())  # the one host sync of a clipped step
    else:
        bad = int(mod.dp_clip_factors(sq.numpy(), float(max_norm), norms.numpy(), factors.numpy()))
    check_norms(norms, bad)
    return norms, factors


# ---------------------------------------------------------------------------------------------- #
# clipped_sum


def clipped_sum(x: Tensor, c: Tensor) -> Tensor:
    """``sum_b c[b] * x[b]`` for per-sample gradients ``x`` (B, ...) and factors ``c`` (B,).

    The result has ``x``'s dtype and one sample's shape; ``c`` is cast to ``x``'s dtype.
    """
    if x.dim() < 1 or c.shape != (x.shape[0],):
        raise ValueError(f"clipped_sum: c must have shape ({x.shape[0] if x.dim() else '?'},), got "
                         f"{tuple(c.shape)}")
    where = backend(x)
    if where == "reference" or x.numel() == 0:
        return clipped_sum_reference(x, c)
    flat = x.detach().reshape(x.shape[0], -1).contiguous()
    cc = c.detach().to(device=x.device, dtype=x.dtype).contiguous()
    out = torch.empty(flat.shape[1], dtype=x.dtype, device=x.device)
    mod = _native()
    if where == "cuda":
        mod.dp_clipped_sum_cuda(_dtype(flat), flat.data_ptr(), cc.data_ptr(), flat.shape[0], flat.shape[1],
                                out.data_ptr(), False, _stream(flat))
    else:
        mod.dp_clipped_sum(flat.numpy(), cc.numpy(), out.numpy(), False, torch.get_num_threads())
    return out.reshape(x.shape[1:])


# ---------------------------------------------------------------------------------------------- #
# group_norm_affine


def group_norm_affine(a: Tensor, g: Tensor, groups: int, eps: float) -> tuple[Tensor, Tensor]:
    """Per-sample GroupNorm weight and bias gradients, each (B, C), from input ``a`` and output grad ``g``."""
    wg, bg, _ = _group_norm_affine(a, g, groups, eps, with_sq=False)
    return wg, bg


def group_norm_affine_sq(a: Tensor, g: Tensor, groups: int, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`group_norm_affine` plus each sample's squared norm of both, float64 (B,), in the same call."""
    wg, bg, sq = _group_norm_affine(a, g, groups, eps, with_sq=True)
    assert sq is not None
    return wg, bg, sq


def _group_norm_affine(a: Tensor, g: Tensor, groups: int, eps: float, *,
                       with_sq: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    check_group_norm(a, g, groups, eps)
    where = backend(a, g)
    if where == "reference" or a.numel() == 0 or a.dtype != g.dtype or a.device != g.device:
        wg, bg = group_norm_affine_reference(a, g, groups, eps)
        return wg, bg, (row_sqnorms_reference(wg) + row_sqnorms_reference(bg)) if with_sq else None
    b, c = a.shape[0], a.shape[1]
    a3 = a.detach().reshape(b, c, -1).contiguous()
    g3 = g.detach().reshape(b, c, -1).contiguous()
    wg = torch.empty(b, c, dtype=a.dtype, device=a.device)
    bg = torch.empty_like(wg)
    sq = torch.empty(b, dtype=torch.float64, device=a.device) if with_sq else None
    mod = _native()
    if where == "cuda":
        mod.dp_group_norm_affine_cuda(_dtype(a3), a3.data_ptr(), g3.data_ptr(), b, c, a3.shape[2], groups, float(eps),
                                      wg.data_ptr(), bg.data_ptr(), _stream(a3), 0 if sq is None else sq.data_ptr())
    else:
        mod.dp_group_norm_affine(a3.numpy(), g3.numpy(), groups, float(eps), wg.numpy(), bg.numpy(),
                                 torch.get_num_threads(), None if sq is None else sq.numpy())
    return wg, bg, sq
