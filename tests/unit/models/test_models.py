"""The model registry and the two built-in models (small CNN, ResNet-18 with GroupNorm)."""

from __future__ import annotations

import pytest
import torch

from medfl.errors import NotFound
from medfl.models import create_model, list_models, register_model


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_list_and_did_you_mean():
    assert {"cnn", "resnet18"} <= set(list_models())
    with pytest.raises(NotFound, match="did you mean 'resnet18'") as info:
        create_model("resnet-18")
    assert isinstance(info.value, KeyError) and "known:" in str(info.value)
    with pytest.raises(NotFound, match="did you mean 'cnn'"):
        create_model("cnnn")


def test_bad_kwargs_are_named():
    with pytest.raises(TypeError, match="depth"):
        create_model("cnn", depth=3)
    with pytest.raises(ValueError, match="num_classes"):
        create_model("cnn", num_classes=1)
    with pytest.raises(ValueError, match="in_channels"):
        create_model("resnet18", in_channels=0)
    with pytest.raises(ValueError, match="width"):
        create_model("cnn", width=0)


def test_register_twice_is_refused():
    with pytest.raises(ValueError, match="twice"):
        register_model("cnn")(lambda: torch.nn.Identity())


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
@pytest.mark.parametrize("size", [64, 224])
def test_logits_shape(name, size):
    model = create_model(name).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, size, size))
    assert out.shape == (2, 2) and out.dtype == torch.float32 and torch.isfinite(out).all()
    score = torch.softmax(out, dim=1)[:, 1]
    assert ((score >= 0) & (score <= 1)).all()


def test_cnn_any_size_from_28_and_other_heads():
    model = create_model("cnn", num_classes=3, in_channels=3, width=20).eval()
    with torch.no_grad():
        for size in (28, 45, 100):
            assert model(torch.rand(1, 3, size, size)).shape == (1, 3)


def test_parameter_counts():
    assert 100_000 <= _count(create_model("cnn")) <= 300_000
    assert 11_100_000 <= _count(create_model("resnet18")) <= 11_300_000  # torchvision's is 11.17M at 3 ch


def test_no_batchnorm_anywhere():
    for name in list_models():
        kinds = {type(m).__name__ for m in create_model(name).modules()}
        assert not any("BatchNorm" in k for k in kinds), (name, kinds)
        assert "GroupNorm" in kinds
        assert not any(b.numel() for b in create_model(name).buffers())  # nothing like running stats


def test_models_are_distinct_and_trainable():
    torch.manual_seed(0)
    model = create_model("cnn")
    out = model(torch.rand(4, 1, 64, 64))
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 0, 1])).backward()
    assert all(p.grad is not None for p in model.parameters())
