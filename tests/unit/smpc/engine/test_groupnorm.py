"""GroupNorm on shares vs torch, with the Newton step count planned from a calibrated variance range."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from medfl.smpc import InMemoryChannel, LocalDealer, reconstruct, ring, share
from medfl.smpc.engine.groupnorm import START_RATIO, group_norm, newton_plan, newton_steps
from medfl.smpc.engine.layers import Session, divide


@pytest.mark.parametrize("scale", [0.3, 1.0, 4.0])
def test_group_norm_matches_torch_within_bound(scale: float) -> None:
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(4, 6, 5)) * scale + 0.5).astype(np.float32)
    gamma = rng.normal(size=4).astype(np.float32)
    beta = rng.normal(size=4).astype(np.float32)
    s = Session(LocalDealer(), InMemoryChannel())
    out = group_norm(share(ring.encode(x)), 2, share(ring.encode(gamma)), share(ring.encode(beta)), s,
                     eps=1e-5, v_range=(0.01, 25.0))
    want = F.group_norm(torch.from_numpy(x)[None], 2, torch.from_numpy(gamma), torch.from_numpy(beta), 1e-5)[0]
    err = np.max(np.abs(ring.decode(reconstruct(out)) - want.double().numpy()))
    assert err < 2e-2, err


def test_newton_steps_bound_and_refusal() -> None:
    k = newton_steps(0.01, 25.0, 1e-3)
    y, v = 1 / np.sqrt(25.0), np.geomspace(0.01, 25.0, 200)
    yy = np.full_like(v, y)
    for _ in range(k):
        yy = yy * (3 - v * yy * yy) / 2
    assert np.max(np.abs(yy * np.sqrt(v) - 1)) < 1e-3
    with pytest.raises(ValueError, match="v_min"):
        newton_steps(0.0, 1.0)


def test_groupnorm_over_large_groups_stays_accurate() -> None:
    """49152 elements per group: 1/n needs more than frac_bits of precision (it was 25% off)."""
    rng = np.random.default_rng(8)  # test data only
    x = (rng.normal(size=(24, 128, 128)) * 0.5 + 0.3).astype(np.float32)
    g = rng.uniform(0.5, 1.5, size=24).astype(np.float32)
    b = rng.normal(size=24).astype(np.float32)
    want = torch.nn.functional.group_norm(torch.from_numpy(x)[None], 8, torch.from_numpy(g),
                                          torch.from_numpy(b), 1e-5)[0].numpy()
    var = x.reshape(8, -1).var(axis=1)
    s = Session(LocalDealer(), InMemoryChannel())
    out = group_norm(share(ring.encode(x)), 8, share(ring.encode(g)), share(ring.encode(b)), s, eps=1e-5,
                     v_range=(float(var.min()) / 4, float(var.max()) * 4))
    assert np.max(np.abs(ring.decode(reconstruct(out)) - want)) < 2e-3


@pytest.mark.parametrize("n", [1, 3, 49, 49152, 2**22])
def test_divide_by_public_integer(n: int) -> None:
    rng = np.random.default_rng(n)  # test data only
    x = rng.normal(size=64) * n
    s = Session(LocalDealer(), InMemoryChannel())
    got = ring.decode(reconstruct(divide(share(ring.encode(x)), n, s)))
    assert np.max(np.abs(got - x / n)) < 1e-4 * max(1.0, float(np.max(np.abs(x / n))))


@pytest.mark.parametrize("v_range", [(0.01, 25.0), (1e-3, 10.0), (0.5, 2.0)])
def test_newton_plan_reaches_tolerance_everywhere_with_no_more_steps(v_range: tuple[float, float]) -> None:
    y0, k = newton_plan(*v_range, tol=1e-3)
    assert k <= newton_steps(*v_range, tol=1e-3)
    v = np.geomspace(*v_range, 20000)
    y = np.full_like(v, y0)
    for _ in range(k):
        y = y * (3 - v * y * y) / 2
    assert np.max(np.abs(y * np.sqrt(v) - 1)) < 1e-3


def test_group_norm_rounds_one_start_round_and_four_per_newton_step() -> None:
    rng = np.random.default_rng(9)  # test data only
    x = rng.normal(size=(4, 6, 6)).astype(np.float32)
    ch = InMemoryChannel()
    s = Session(LocalDealer(), ch)
    one, zero = share(ring.encode(np.ones(4))), share(ring.encode(np.zeros(4)))
    group_norm(share(ring.encode(x)), 2, one, zero, s, eps=1e-5, v_range=(0.1, 10.0))
    _, k = newton_plan(1.0, START_RATIO)
    # mean 1, square 2, variance 1, start 1, Newton 4 per step, gamma * y 2, (x - mu) * scale 2
    assert k == 1
    assert ch.rounds == 9 + 4 * k


def test_group_norm_start_covers_groups_of_very_different_variance() -> None:
    rng = np.random.default_rng(10)  # test data only
    scales = np.array([0.1, 0.4, 1.5, 6.0])  # variances from 0.01 to 36 (16 fractional bits resolve them)
    x = (rng.normal(size=(8, 7, 7)) * np.repeat(scales, 2)[:, None, None] + 0.2).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, size=8).astype(np.float32)
    beta = rng.normal(size=8).astype(np.float32)
    s = Session(LocalDealer(), InMemoryChannel())
    out = group_norm(share(ring.encode(x)), 4, share(ring.encode(gamma)), share(ring.encode(beta)), s, eps=1e-5,
                     v_range=(2e-3, 150.0))
    want = F.group_norm(torch.from_numpy(x)[None], 4, torch.from_numpy(gamma), torch.from_numpy(beta), 1e-5)[0]
    assert np.max(np.abs(ring.decode(reconstruct(out)) - want.double().numpy())) < 1e-2
