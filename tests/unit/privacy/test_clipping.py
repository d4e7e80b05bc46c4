"""Clipped per-sample gradient sums against a torch.func (vmap + grad) reference."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from medfl.errors import NonFiniteError
from medfl.privacy import GradSampleClipper

torch.set_num_threads(1)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(10, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 3))


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.GroupNorm(2, 6), nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2), nn.GroupNorm(4, 8), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 3),
    )


def _cnn_grouped() -> nn.Module:  # grouped, dilated and strided convolutions on every norm path
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2), nn.GroupNorm(2, 8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, bias=False), nn.GroupNorm(4, 16), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 3),
    )


class _Emb(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(12, 8, padding_idx=0)
        self.ln = nn.LayerNorm(8)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.ln(self.emb(x))).mean(1)


def _data(kind: str, b: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(b)
    if kind == "mlp":
        return torch.randn(b, 10, generator=g, dtype=torch.float64)
    if kind in ("cnn", "cnn_grouped"):
        return torch.randn(b, 1, 10, 10, generator=g, dtype=torch.float64)
    return torch.randint(0, 12, (b, 5), generator=g)


def _reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, c: float) -> dict[str, torch.Tensor]:
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, p, (xi.unsqueeze(0),))
        return nn.functional.cross_entropy(out, yi.unsqueeze(0), reduction="sum")

    per = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in per.values()))
    f = (c / (norms + 1e-6)).clamp(max=1.0)
    return {k: torch.einsum("b...,b->...", g, f) for k, g in per.items()}


@pytest.mark.parametrize("kind,factory", [("mlp", _mlp), ("cnn", _cnn), ("cnn_grouped", _cnn_grouped),
                                          ("emb", _Emb)])
@pytest.mark.parametrize("batch", [1, 7, 64])
@pytest.mark.parametrize("clip", [1e-3, 1.0, 1e4])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_clipped_sum_matches_torch_func(kind, factory, batch, clip, reduction):
    torch.manual_seed(0)
    model = factory().double()
    x = _data(kind, batch)
    y = torch.randint(0, 3, (batch,))
    ref = _reference(model, x, y, clip)
    clipper = GradSampleClipper(model, max_grad_norm=clip, loss_reduction=reduction)
    nn.functional.cross_entropy(model(x), y, reduction=reduction).backward()
    clipper.clip_and_accumulate()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, ref[name], rtol=1e-5, atol=1e-9 * max(1.0, clip))


def test_clip_all_bounds_total_norm():
    torch.manual_seed(1)
    model = _cnn().double()
    x, y = _data("cnn", 7), torch.randint(0, 3, (7,))
    clipper = GradSampleClipper(model, max_grad_norm=1e-3)
    nn.functional.cross_entropy(model(x), y, reduction="sum").backward()
    norms = clipper.clip_and_accumulate()
    assert bool((norms > 1e-3).all())
    total = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters()))
    assert float(total) <= 7 * 1e-3 * (1 + 1e-6)


def test_nonfinite_rejected():
    model = _mlp()
    x = torch.randn(4, 10)
    x[2, 0] = float("nan")
    clipper = GradSampleClipper(model, max_grad_norm=1.0)
    model(x).sum().backward()
    with pytest.raises(NonFiniteError, match="NaN or inf"):
        clipper.clip_and_accumulate()


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_grad_norm"):
        GradSampleClipper(_mlp(), max_grad_norm=0.0)
    with pytest.raises(ValueError, match="loss_reduction"):
        GradSampleClipper(_mlp(), max_grad_norm=1.0, loss_reduction="avg")


@pytest.mark.parametrize(
    "name,image,batch",
    [("cnn", 16, 1), ("cnn", 16, 7), ("cnn", 16, 64), ("resnet18", 32, 1), ("resnet18", 32, 7)],
)
@pytest.mark.parametrize("clip", [1e-3, 1.0, 1e4])
def test_medfl_models_match_torch_func(name, image, batch, clip):
    from medfl.models.registry import create_model

    torch.manual_seed(2)
    model = create_model(name).double().eval()  # dropout off so both sides see the same function
    x = torch.randn(batch, 1, image, image, dtype=torch.float64)
    y = torch.randint(0, 2, (batch,))
    ref = _reference(model, x, y, clip)
    clipper = GradSampleClipper(model, max_grad_norm=clip)
    nn.functional.cross_entropy(model(x), y, reduction="sum").backward()
    clipper.clip_and_accumulate()
    for pname, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[pname], rtol=1e-5, atol=1e-9 * max(1.0, clip))


@pytest.mark.slow
def test_resnet18_batch_64_matches_torch_func_for_every_clip_regime():
    """ResNet-18 (GroupNorm) at batch 64: one torch.func reference, clip norms that clip all, some and none."""
    from medfl.models.registry import create_model

    torch.manual_seed(3)
    model = create_model("resnet18").double().eval()
    x = torch.randn(64, 1, 16, 16, dtype=torch.float64)
    y = torch.randint(0, 2, (64,))
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, xi, yi):
        return nn.functional.cross_entropy(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0),
                                           reduction="sum")

    per = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in per.values()))
    median = float(norms.median())
    for clip in (float(norms.min()) / 2, median, float(norms.max()) * 2):  # all, some (half), none clipped
        f = (clip / (norms + 1e-6)).clamp(max=1.0)
        clipper = GradSampleClipper(model, max_grad_norm=clip)
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y, reduction="sum").backward()
        got_norms = clipper.clip_and_accumulate()
        clipper.remove()
        torch.testing.assert_close(got_norms, norms, rtol=1e-6, atol=0.0)
        for name, p in model.named_parameters():
            want = torch.einsum("b...,b->...", per[name], f)
            torch.testing.assert_close(p.grad, want, rtol=1e-5, atol=1e-9 * max(1.0, clip))
