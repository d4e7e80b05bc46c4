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
from torch.nn.grad import conv2d_weight as _conv2d_weight
from torch.nn.grad import conv3d_weight as _conv3d_weight

from medfl.errors import StateError
from medfl.native import clipping as kernels

__all__ = ["SUPPORTED", "GradSampleClipper"]

SUPPORTED: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d, nn.Conv3d, nn.GroupNorm, nn.LayerNorm,
                                          nn.Embedding)


#: Conv2d with at most this many (input channels / groups) x kernel taps per output unfold their
#: input for direct per-sample gradients; wider ones use one grouped backward-weight
#: convolution instead (measured here on a 2-core CPU: unfold + bmm 53 ms vs grouped 82 ms for
#: 1 -> 24 channels at 128 px, batch 32; 381 vs 106 ms for 24 -> 48 at 64 px).
_UNFOLD_MAX_D = 32

#: A Conv2d's per-sample weight gradients are kept for the clipped sum (instead of its input and
#: output gradient, which are then released during the backward pass) when they are at most this
#: many times the size of those two tensors; larger ones are recomputed in :meth:`_Layer.accumulate`.
_KEEP_PER_SAMPLE = 1.0


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
        self._affine: tuple[Tensor, Tensor] | None = None  # per-sample GroupNorm/LayerNorm grads, this step
        self._per_sample: Tensor | None = None  # (B, weight.numel()) per-sample Conv2d weight grads, if kept
        self._bias: Tensor | None = None  # (B, out_channels) per-sample Conv2d bias grads, with _per_sample
        self._sq: Tensor | None = None  # per-sample squared norms, once settled
        self.dtype = torch.float32  # of the output gradient (and so of the clipped sums)

    def settle(self) -> None:
        """Reduce what can be reduced as soon as the output gradient arrives (during backward).

        GroupNorm/LayerNorm layers keep only their per-sample affine gradients, (B, C); Conv2d
        layers whose per-sample weight gradients are kept keep only those and their bias sums.
        Their inputs and output gradients are released while the backward pass goes on, so the
        memory a clipped step holds at its peak stays close to the non-private step's.
        """
        m = self.module
        if isinstance(m, nn.GroupNorm) and self.a is not None and self.g is not None:  # one fused call
            wg, bg, sq = kernels.group_norm_affine_sq(self.a, self.g, m.num_groups, m.eps)
            self._affine, self._sq = (wg, bg), sq
            self.a = self.g = None
            return
        if isinstance(m, (nn.GroupNorm, nn.LayerNorm)) or (isinstance(m, (nn.Conv2d, nn.Conv3d))
                                                           and m.weight.requires_grad):
            sq = self._sq_norms()
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                if self._per_sample is None:
                    return
                g = self.g
                assert g is not None
                self._bias = (g.sum(tuple(range(2, g.dim()))) if m.bias is not None and m.bias.requires_grad
                              else None)
            self._sq = sq.to(torch.float64)
            self.a = self.g = None

    def _flat(self) -> tuple[Tensor, Tensor]:
        m, a, g = self.module, self.a, self.g
        if a is None or g is None:
            raise StateError(f"{type(m).__name__} saw no forward/backward; call backward() on the loss first")
        if isinstance(m, nn.Conv2d):
            # The batch folded into the channels: one im2col over the whole batch (torch's unfold
            # runs one kernel per sample), the same columns as unfolding each sample.
            b, c = a.shape[0], a.shape[1]
            cols = F.unfold(a.reshape(1, b * c, *a.shape[2:]), m.kernel_size, m.dilation, m.padding,  # type: ignore[arg-type]
                            m.stride).reshape(b, c * m.kernel_size[0] * m.kernel_size[1], -1)
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

    def _conv_sq_norms(self) -> Tensor:
        """Per-sample squared norm of a Conv2d weight gradient.

        Ghost norm over unfolded inputs when the output map is small; direct per-sample
        gradients over unfolded inputs when the input is narrow; otherwise each sample's
        weight gradient from one grouped backward-weight convolution (the batch folded into
        the groups), which never builds the unfolded input. Grouped convolutions always take
        the last way. Per-sample gradients up to four times the size of the layer's saved input and
        output gradient are kept for :meth:`accumulate`, which then needs no second contraction.
        """
        m, a, g = self.module, self.a, self.g
        assert isinstance(m, nn.Conv2d) and a is not None and g is not None
        b, c_in, h, w = a.shape
        p = g.shape[1]
        t = g.shape[2] * g.shape[3]
        d = c_in // m.groups * m.kernel_size[0] * m.kernel_size[1]
        small = b * p * d <= _KEEP_PER_SAMPLE * (a.numel() + g.numel())
        if m.groups == 1 and t * t * (d + p) < t * d * p:
            cols, gg = self._flat()  # ghost norm [2]
            return (torch.bmm(cols, cols.transpose(1, 2)) * torch.bmm(gg, gg.transpose(1, 2))).sum((1, 2))
        if m.groups == 1 and d <= _UNFOLD_MAX_D:
            cols, gg = self._flat()  # a cheap unfold (few input channels) [1]
            per_sample = torch.bmm(gg.transpose(1, 2), cols)
        else:
            per_sample = _conv2d_weight(
                a.reshape(1, b * c_in, h, w), (b * p, c_in // m.groups, *m.kernel_size),
                g.reshape(1, b * p, *g.shape[2:]), stride=m.stride, padding=m.padding, dilation=m.dilation,
                groups=b * m.groups)  # type: ignore[arg-type]
        per_sample = per_sample.reshape(b, -1)
        if small:
            self._per_sample = per_sample
        return kernels.row_sqnorms(per_sample)

    def _conv3d_sq_norms(self) -> Tensor:
        """Per-sample squared norm of a Conv3d weight gradient.

        Volumes make unfolding (and the ghost norm's T x T products) far larger than the
        per-sample gradients themselves, so each sample's weight gradient comes from one grouped
        backward-weight convolution with the batch folded into the groups [1]. They are kept
        for :meth:`accumulate` when no larger than the saved input and output gradient.
        """
        m, a, g = self.module, self.a, self.g
        assert isinstance(m, nn.Conv3d) and a is not None and g is not None
        b, c_in = a.shape[0], a.shape[1]
        p = g.shape[1]
        per_sample = _conv3d_weight(
            a.reshape(1, b * c_in, *a.shape[2:]), (b * p, c_in // m.groups, *m.kernel_size),
            g.reshape(1, b * p, *g.shape[2:]), stride=m.stride, padding=m.padding, dilation=m.dilation,
            groups=b * m.groups).reshape(b, -1)  # type: ignore[arg-type]
        if per_sample.numel() <= _KEEP_PER_SAMPLE * (a.numel() + g.numel()):
            self._per_sample = per_sample
        return kernels.row_sqnorms(per_sample)

    def sq_norms(self) -> Tensor:
        """Per-sample squared gradient norm over this module's trainable parameters.

        float64 once the layer has settled, else in the layer's dtype (the caller casts once for all layers).
        """
        return self._sq if self._sq is not None else self._sq_norms()

    def _sq_norms(self) -> Tensor:
        m = self.module
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            g = self.g
            if g is None or self.a is None:
                raise StateError(f"{type(m).__name__} saw no forward/backward; call backward() on the loss first")
            if not m.weight.requires_grad:
                out = g.new_zeros(g.shape[0])
            else:
                out = self._conv_sq_norms() if isinstance(m, nn.Conv2d) else self._conv3d_sq_norms()
            if m.bias is not None and m.bias.requires_grad:
                out = out + g.sum(tuple(range(2, g.dim()))).pow(2).sum(1)
            return out
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
        return kernels.row_sqnorms(wg) + kernels.row_sqnorms(bg)

    def _affine_grads(self, a: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        if self._affine is None:
            self._affine = self._compute_affine_grads(a, g)
        return self._affine

    def _compute_affine_grads(self, a: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        m = self.module
        if isinstance(m, nn.GroupNorm):  # fused: no normalised input is materialised
            return kernels.group_norm_affine(a, g, m.num_groups, m.eps)
        xhat = self._norm_terms()
        dims = tuple(range(1, g.dim() - len(m.normalized_shape)))  # type: ignore[arg-type]
        if not dims:  # torch's sum(()) would reduce every dimension
            return g * xhat, g
        return (g * xhat).sum(dims), g.sum(dims)

    def accumulate(self, c: Tensor) -> None:
        """Write the clipped sum ``sum_i c_i G_i`` into each parameter's ``grad`` [3]."""
        m = self.module
        c = c.to(self.dtype)
        grads: dict[str, Tensor] = {}
        if isinstance(m, (nn.Conv2d, nn.Conv3d)) and self._per_sample is not None:
            grads["weight"] = kernels.clipped_sum(self._per_sample, c).reshape(m.weight.shape)
            if self._bias is not None:
                grads["bias"] = kernels.clipped_sum(self._bias, c)
            elif self.g is not None:
                grads["bias"] = kernels.clipped_sum(self.g.sum(tuple(range(2, self.g.dim()))), c)
            self._write(grads)
            return
        if isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
            wg, bg = self._affine if self._affine is not None else self._affine_grads(*self._flat())
            grads["weight"] = kernels.clipped_sum(wg, c).reshape(m.weight.shape)  # type: ignore[union-attr,arg-type]
            grads["bias"] = kernels.clipped_sum(bg, c).reshape(m.bias.shape)  # type: ignore[union-attr,arg-type]
            self._write(grads)
            return
        if isinstance(m, (nn.Conv2d, nn.Conv3d)) and self.a is not None and self.g is not None:
            a, g, cv = self.a, self.g, c.view(-1, *([1] * (self.a.dim() - 1)))
            # sum_i c_i G_i is linear in either factor: scale the smaller tensor
            if a.numel() <= g.numel():
                a = a * cv
            else:
                g = g * cv
            weight_grad = _conv2d_weight if isinstance(m, nn.Conv2d) else _conv3d_weight
            grads["weight"] = weight_grad(a, m.weight.shape, g, stride=m.stride,  # type: ignore[arg-type]
                                          padding=m.padding, dilation=m.dilation, groups=m.groups)
            if m.bias is not None:
                grads["bias"] = torch.einsum("bp,b->p", self.g.sum(tuple(range(2, self.g.dim()))), c)
            self._write(grads)
            return
        a, g = self._flat()
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
        self._write(grads)

    def _write(self, grads: dict[str, Tensor]) -> None:
        for name, value in grads.items():
            p = getattr(self.module, name, None)
            if isinstance(p, nn.Parameter) and p.requires_grad:
                p.grad = value if p.grad is None else p.grad + value
        self.a = self.g = None
        self._affine = self._per_sample = self._bias = self._sq = None


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
        # Autograd's own weight gradients are never used (clip_and_accumulate forms the clipped
        # sums), so the model's forward runs with these parameters frozen and the backward pass
        # computes activation gradients only [3]; the input is made to require grad so that
        # every layer's output gradient still flows. Embedding weights stay as they are (their
        # integer inputs cannot carry a gradient).
        self._frozen = [p for layer in self.layers if not isinstance(layer.module, nn.Embedding)
                        for p in layer.module.parameters(recurse=False) if p.requires_grad]
        self._handles.append(model.register_forward_pre_hook(self._freeze))
        self._handles.append(model.register_forward_hook(self._thaw, always_call=True))

    def _freeze(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if not torch.is_grad_enabled() or not args:
            return None
        for p in self._frozen:
            p.requires_grad_(False)
        x = args[0]
        if isinstance(x, Tensor) and x.is_floating_point() and not x.requires_grad:
            return (x.detach().requires_grad_(True), *args[1:])
        return None

    def _thaw(self, *_: Any) -> None:
        for p in self._frozen:
            p.requires_grad_(True)

    def _forward_hook(self, layer: _Layer) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if not torch.is_grad_enabled():
                return
            layer.a = inputs[0].detach()

            def grad_hook(grad: Tensor) -> None:
                layer.g = grad.detach() * grad.shape[0] if self.loss_reduction == "mean" else grad.detach()
                layer.dtype = grad.dtype
                layer._affine = layer._per_sample = layer._bias = layer._sq = None
                layer.settle()

            if output.requires_grad:
                output.register_hook(grad_hook)

        return hook

    def clip_and_accumulate(self) -> Tensor:
        """Clip each sample's gradient to ``max_grad_norm`` and sum into ``param.grad``.

        Returns
        -------
        torch.Tensor
            The per-sample gradient norms before clipping, shape ``(B,)``, float64.

        Raises
        ------
        NonFiniteError
            If any per-sample norm is NaN or infinite.
        """
        by_dtype: dict[torch.dtype, list[Tensor]] = {}
        for layer in self.layers:  # one stack and one cast per dtype, not one cast per layer
            sq = layer.sq_norms()
            by_dtype.setdefault(sq.dtype, []).append(sq)
        sums = [torch.stack(v).sum(0).to(torch.float64) for v in by_dtype.values()]
        norms, c = kernels.clip_factors(torch.stack(sums), self.max_grad_norm)
        cast: dict[torch.dtype, Tensor] = {}
        for layer in self.layers:
            for p in layer.module.parameters(recurse=False):
                p.grad = None
            if layer.dtype not in cast:
                cast[layer.dtype] = c.to(layer.dtype)
            layer.accumulate(cast[layer.dtype])
        return norms

    def remove(self) -> None:
        """Remove every hook this clipper installed (parameters trainable again)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._thaw()
