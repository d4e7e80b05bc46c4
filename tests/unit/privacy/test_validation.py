"""Validation and repair of models for per-sample clipping."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medfl.privacy.validation import UnsupportedModel, fix, validate


def test_batchnorm_reported_then_replaced():
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(2, 1, 6, 6))
    problems = validate(model)
    assert [(p.path, p.kind) for p in problems] == [("1", "BatchNorm2d")]
    assert "GroupNorm" in problems[0].fix
    fix(model)
    assert isinstance(model[1], nn.GroupNorm) and model[1].num_channels == 8
    assert validate(model) == []


def test_unfixable_listed_with_fix():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.PReLU(), nn.BatchNorm1d(3))
    with pytest.raises(UnsupportedModel) as err:
        fix(model)
    kinds = [p.kind for p in err.value.problems]
    assert kinds == ["Conv2d", "PReLU"]
    assert "requires_grad=False" in str(err.value) and "groups=2" in str(err.value)


def test_frozen_unsupported_is_fine():
    prelu = nn.PReLU()
    prelu.requires_grad_(False)
    assert validate(nn.Sequential(nn.Linear(3, 3), prelu)) == []
