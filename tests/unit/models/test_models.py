"""The model registry and the two models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medfl.errors import NotFound
from medfl.models import create_model, list_models
from medfl.models.weights import load_checkpoint, load_state_arrays, save_checkpoint, state_arrays


def test_registry_and_did_you_mean():
    assert list_models() == ["cnn", "resnet18"]
    with pytest.raises(NotFound, match="did you mean 'resnet18'"):
        create_model("resnet-18")
    with pytest.raises(TypeError, match="no argument"):
        create_model("cnn", depth=3)


@pytest.mark.parametrize("name,size", [("cnn", 28), ("cnn", 64), ("cnn", 224), ("resnet18", 64), ("resnet18", 224)])
def test_shapes(name, size):
    model = create_model(name).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 1, size, size))
    assert out.shape == (2, 2)


def test_sizes_and_no_batchnorm():
    counts = {n: sum(p.numel() for p in create_model(n).parameters()) for n in list_models()}
    assert 30_000 < counts["cnn"] < 300_000
    assert 11_000_000 < counts["resnet18"] < 11_400_000
    for n in list_models():
        kinds = {type(m).__name__ for m in create_model(n).modules()}
        assert not any("BatchNorm" in k for k in kinds) and "GroupNorm" in kinds
    assert create_model("cnn", num_classes=3, in_channels=3)(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


def test_weights_round_trip(tmp_path):
    a, b = create_model("cnn"), create_model("cnn")
    arrays = state_arrays(a)
    assert all(v.dtype == np.float32 and v.flags.c_contiguous for v in arrays.values())
    load_state_arrays(b, arrays)
    for k, v in state_arrays(b).items():
        np.testing.assert_array_equal(v, arrays[k])
    path = tmp_path / "ck" / "round-0001.safetensors"
    save_checkpoint(path, arrays, {"job_id": "j", "round": "1"})
    loaded, meta = load_checkpoint(path)
    assert meta == {"job_id": "j", "round": "1"}
    assert list(loaded) == list(arrays) or set(loaded) == set(arrays)
    assert not list(path.parent.glob(".*tmp"))
    assert b"pickle" not in path.read_bytes()[:200]


def test_strict_loading():
    model = create_model("cnn")
    arrays = state_arrays(model)
    name = next(iter(arrays))
    bad = dict(arrays)
    bad.pop(name)
    with pytest.raises(ValueError, match="missing"):
        load_state_arrays(model, bad)
    bad = dict(arrays, extra=np.zeros(1, np.float32))
    with pytest.raises(ValueError, match="extra"):
        load_state_arrays(model, bad)
    bad = dict(arrays)
    bad[name] = np.zeros((1, 2, 3), np.float32)
    with pytest.raises(ValueError, match="shape mismatch"):
        load_state_arrays(model, bad)
