"""Per-sample gradient clipping in one backward pass (ghost norms and book-keeping).

Forward hooks keep each layer's input, tensor hooks on its output keep the output
gradient; after the single backward pass the per-sample gradient norms are computed
from these (the ghost-norm identity or direct instantiation, whichever is cheaper per
layer), then the clipped sum ``sum_i c_i G_i`` is formed as one contraction per layer
and written to ``param.grad``. No second backward pass is run.

References
----------
.. [1] I. Goodfellow, "Efficient per-example gradient computations", arXiv:1510.01799, 2015.
.. [2] X. Li, F. Tramer, P. Liang, T. Hashimoto, "Large language models can be strong
   differentially private learners", ICLR 2022 (ghost clipping).
.. [3] Z. Bu, Y.-X. Wang, S. Zha, G. Karypis, "Differentially private optimization on
   large model at small cost", ICML 2023 (book-keeping).
.. [4] M. Abadi et al., "Deep learning with differential privacy", CCS 2016.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medfl.errors import NonFiniteError, StateError

__all__ = ["SUPPORTED", "GradSampleClipper"]

SUPPORTED: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d, nn.GroupNorm, nn.LayerNorm, nn.Embedding)


def _pairs(a: Tensor, g: Tensor) -> Tensor:
    """Per-sample squared norm of ``sum_t g_t a_t^T`` for ``a`` (B,T,d), ``g`` (B,T,p)."""
    t, d, p = a.shape[1], a.shape[2], g.shape[2]
    if t * t * (d + p) < t * d * p:  # ghost norm [2]: (a a^T) . (g g^T)
        return (torch.bmm(a, a.transpose(1, 2)) * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))
    return torch.bmm(g.transpose(1, 2), a).pow(2).sum((1, 2))  # direct instantiation [1]


class _Layer:
    """Book-keeping for one supported module: its inputs, output gradients and maths."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.a: Tensor | None = None
        self.g: Tensor | None = None

    def _flat(self) -> tuple[Tensor, Tensor]:
        m, a, g = self.module, self.a, self.g
        if a is None or g is None:
            raise StateError(f"{type(m).__name__} saw no forward/backward; call backward() on the loss first")
        if isinstance(m, nn.Conv2d):
            cols = F.unfold(a, m.kernel_size, m.dilation, m.padding, m.stride)  # type: ignore[arg-type]
            return cols.transpose(1, 2), g.flatten(2).transpose(1, 2)
        if isinstance(m, nn.Linear):
            return a.reshape(a.shape[0], -1, a.shape[-1]), g.reshape(g.shape[0], -1, g.shape[-1])
        return a, g

    def _norm_terms(self) -> Tensor:
        """Normalised input ``x_hat`` of a GroupNorm/LayerNorm (its weight multiplies it)."""
        m, a = self.module, self.a
        if a is None:
            raise StateError(f"{type(m).__name__} saw no forward pass")
        if isinstance(m, nn.GroupNorm):
            return F.group_norm(a, m.num_groups, eps=m.eps)
        return F.layer_norm(a, m.normalized_shape, eps=m.eps)  # type: ignore[arg-type]

    def sq_norms(self) -> Tensor:
        """Per-sample squared gradient norm over this module's trainable parameters."""
        m = self.module
        a, g = self._flat()
        b = g.shape[0]
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            out = _pairs(a, g) if m.weight.requires_grad else g.new_zeros(b)
            if m.bias is not None and m.bias.requires_grad:
                out = out + g.sum(1).pow(2).sum(1)
            return out
        if isinstance(m, nn.Embedding):
            g = g.reshape(b, -1, g.shape[-1])
            idx = a.reshape(b, -1)
            if m.padding_idx is not None:
                g = g * (idx != m.padding_idx).unsqueeze(-1)
            same = (idx.unsqueeze(2) == idx.unsqueeze(1)).to(g.dtype)
            return (same * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))
        wg, bg = self._affine_grads(a, g)
        return wg.pow(2).flatten(1).sum(1) + bg.pow(2).flatten(1).sum(1)

    def _affine_grads(self, a: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        m = self.module
        xhat = self._norm_terms()
        if isinstance(m, nn.GroupNorm):
            dims = tuple(range(2, g.dim()))
        else:
            dims = tuple(range(1, g.dim() - len(m.normalized_shape)))  # type: ignore[arg-type]
        if not dims:  # torch's sum(()) would reduce every dimension
            return g * xhat, g
        return (g * xhat).sum(dims), g.sum(dims)

    def accumulate(self, c: Tensor) -> None:
        """Write the clipped sum ``sum_i c_i G_i`` into each parameter's ``grad`` [3]."""
        m = self.module
        a, g = self._flat()
        grads: dict[str, Tensor] = {}
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            grads["weight"] = torch.einsum("btp,btd,b->pd", g, a, c).reshape(m.weight.shape)
            grads["bias"] = torch.einsum("btp,b->p", g, c)
        elif isinstance(m, nn.Embedding):
            gc = (g * c.view(-1, *([1] * (g.dim() - 1)))).reshape(-1, g.shape[-1])
            idx = a.reshape(-1)
            w = torch.zeros_like(m.weight).index_add_(0, idx, gc)
            if m.padding_idx is not None:
                w[m.padding_idx] = 0
            grads["weight"] = w
        else:
            wg, bg = self._affine_grads(a, g)
            grads["weight"] = torch.einsum("b...,b->...", wg, c).reshape(m.weight.shape)  # type: ignore[union-attr,arg-type]
            grads["bias"] = torch.einsum("b...,b->...", bg, c).reshape(m.bias.shape)  # type: ignore[union-attr,arg-type]
        for name, value in grads.items():
            p = getattr(m, name, None)
            if isinstance(p, nn.Parameter) and p.requires_grad:
                p.grad = value if p.grad is None else p.grad + value
        self.a = self.g = None


class GradSampleClipper:
    """Hooks a model so that one backward pass yields per-sample-clipped gradient sums.

    Parameters
    ----------
    model : torch.nn.Module
        Every trainable parameter must belong to a module in :data:`SUPPORTED`
        (run :func:`medfl.privacy.validation.validate` first).
    max_grad_norm : float
        Clip bound ``C``: each sample's whole gradient is scaled by ``min(1, C/||G_i||)``.
    loss_reduction : {"sum", "mean"}
        How the loss combines samples; with ``"mean"`` output gradients are rescaled
        by the batch size so that ``G_i`` is the gradient of sample ``i``'s own loss.

    Notes
    -----
    Usage: ``loss.backward()`` then :meth:`clip_and_accumulate`, which replaces the
    autograd ``grad`` of every hooked parameter by the clipped sum and returns the
    per-sample norms. The model must not reuse a hooked module twice in one forward.

    References
    ----------
    Goodfellow 2015; Li et al. 2022; Bu et al. 2023; Abadi et al. 2016 (module docstring).
    """

    def __init__(self, model: nn.Module, *, max_grad_norm: float, loss_reduction: str = "sum"):
        if not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm={max_grad_norm!r} must be > 0; use e.g. 1.0")
        if loss_reduction not in ("sum", "mean"):
            raise ValueError(f"loss_reduction={loss_reduction!r}; use 'sum' or 'mean'")
        self.max_grad_norm = float(max_grad_norm)
        self.loss_reduction = loss_reduction
        self.layers: list[_Layer] = []
        self._handles: list[Any] = []
        for m in model.modules():
            if isinstance(m, SUPPORTED) and any(p.requires_grad for p in m.parameters(recurse=False)):
                layer = _Layer(m)
                self.layers.append(layer)
                self._handles.append(m.register_forward_hook(self._forward_hook(layer)))

    def _forward_hook(self, layer: _Layer) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if not torch.is_grad_enabled():
                return
            layer.a = inputs[0].detach()

            def grad_hook(grad: Tensor) -> None:
                layer.g = grad.detach() * (grad.shape[0] if self.loss_reduction == "mean" else 1)

            if output.requires_grad:
                output.register_hook(grad_hook)

        return hook

    def clip_and_accumulate(self) -> Tensor:
        """Clip each sample's gradient to ``max_grad_norm`` and sum into ``param.grad``.

        Returns
        -------
        torch.Tensor
            The per-sample gradient norms before clipping, shape ``(B,)``.

        Raises
        ------
        NonFiniteError
            If any per-sample norm is NaN or infinite.
        """
        sq = torch.stack([layer.sq_norms() for layer in self.layers]).sum(0)
        norms = sq.sqrt()
        if not bool(torch.isfinite(norms).all()):
            bad = int((~torch.isfinite(norms)).sum())
            raise NonFiniteError(f"{bad} per-sample gradient norm(s) are NaN or inf; check the loss and inputs")
        c = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        for layer in self.layers:
            for p in layer.module.parameters(recurse=False):
                p.grad = None
            layer.accumulate(c.to(norms.dtype))
        return norms

    def remove(self) -> None:
        """Remove every hook this clipper installed."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
