"""torch references of the per-sample clipping kernels (csrc/privacy); the tests compare the kernels to them.

- :func:`row_sqnorms_reference`: per-sample squared norms of (B, ...) gradients, float64;
- :func:`clip_factors_reference`: norms ``sqrt(sum_l sq[l])`` and factors ``min(1, C / (norm + 1e-6))``
  (Abadi et al., CCS 2016), refusing non-finite norms;
- :func:`clipped_sum_reference`: ``sum_b c_b x_b``;
- :func:`group_norm_affine_reference`: per-sample GroupNorm weight and bias gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor

from medfl.errors import NonFiniteError

__all__ = ["check_group_norm", "check_norms", "clip_factors_reference", "clipped_sum_reference",
           "group_norm_affine_reference", "row_sqnorms_reference"]


def row_sqnorms_reference(x: Tensor) -> Tensor:
    """``x.flatten(1)`` row-wise sums of squares, in float64."""
    return x.detach().flatten(1).double().pow(2).sum(1)


def check_norms(norms: Tensor, bad: int) -> None:
    """Refuse ``bad`` (> 0) non-finite per-sample norms."""
    if bad:
        raise NonFiniteError(f"{bad} per-sample gradient norm(s) are NaN or inf; check the loss and inputs")


def clip_factors_reference(sq: Tensor, max_norm: float) -> tuple[Tensor, Tensor]:
    """Norms ``sqrt(sum_l sq[l])`` and factors ``min(1, C/(norm + 1e-6))``, float64."""
    norms = sq.double().sum(0).sqrt()
    finite = torch.isfinite(norms)
    check_norms(norms, int((~finite).sum()))
    return norms, (max_norm / (norms + 1e-6)).clamp(max=1.0)


def clipped_sum_reference(x: Tensor, c: Tensor) -> Tensor:
    """``c @ x.flatten(1)``, shaped like one sample of ``x``."""
    return (c.to(x.dtype) @ x.detach().flatten(1)).reshape(x.shape[1:])


def check_group_norm(a: Tensor, g: Tensor, groups: int, eps: float) -> None:
    """Refuse GroupNorm gradient inputs of mismatched shapes, bad ``groups`` or negative ``eps``."""
    if a.dim() < 2 or a.shape != g.shape:
        raise ValueError(f"group_norm_affine: a and g must be (B, C, ...) of one shape, got {tuple(a.shape)} and "
                         f"{tuple(g.shape)}")
    if groups <= 0 or a.shape[1] % groups:
        raise ValueError(f"group_norm_affine: groups={groups} must be > 0 and divide C={a.shape[1]}")
    if not eps >= 0:
        raise ValueError(f"group_norm_affine: eps={eps!r} must be >= 0")


def group_norm_affine_reference(a: Tensor, g: Tensor, groups: int, eps: float) -> tuple[Tensor, Tensor]:
    """Per-sample ``(sum_s g * xhat, sum_s g)`` per channel, ``xhat = group_norm(a)`` (torch ops)."""
    check_group_norm(a, g, groups, eps)
    xhat = torch.nn.functional.group_norm(a.detach(), groups, eps=eps)
    dims = tuple(range(2, a.dim()))
    if not dims:
        return g * xhat, g.detach().clone()
    return (g.detach() * xhat).sum(dims), g.detach().sum(dims)
