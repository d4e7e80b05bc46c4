"""Statistics of the DP noise (secure and insecure modes)."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from medfl.privacy import noise


@pytest.mark.parametrize("mode", ["0", "1"])
def test_noise_scale_statistics(monkeypatch, mode, caplog):
    monkeypatch.setenv("MEDFL_INSECURE_RNG", mode)
    n, std = 200_000, 2.5
    with caplog.at_level(logging.WARNING):
        z = noise.gaussian((n,), std=std, like=torch.zeros(1, dtype=torch.float64))
    assert z.shape == (n,) and z.dtype == torch.float64
    # mean ~ N(0, std^2/n); variance estimate ~ std^2 (1 +- sqrt(2/n)); 6-sigma bounds
    assert abs(float(z.mean())) < 6 * std / math.sqrt(n)
    assert abs(float(z.var()) / std**2 - 1) < 6 * math.sqrt(2 / n)
    # fourth standardised moment of a Gaussian is 3 (var of estimate ~ 96/n)
    kurt = float(((z / z.std()) ** 4).mean())
    assert abs(kurt - 3) < 6 * math.sqrt(96 / n)
    warned = any("MEDFL_INSECURE_RNG" in r.message for r in caplog.records)
    assert warned == (mode == "1")


def test_two_draws_differ_and_odd_shapes():
    a = noise.gaussian((3, 5), std=1.0, like=torch.zeros(1))
    b = noise.gaussian((3, 5), std=1.0, like=torch.zeros(1))
    assert a.shape == (3, 5) and a.dtype == torch.float32
    assert not torch.equal(a, b)


def test_bad_std():
    with pytest.raises(ValueError, match="std"):
        noise.gaussian((2,), std=float("nan"), like=torch.zeros(1))
