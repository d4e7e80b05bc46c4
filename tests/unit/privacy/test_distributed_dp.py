"""Client-level DP: the DDG accountant, conditional rounding's bound, the ring and the modular wrap."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest

from medfl.errors import NonFiniteError, SecAggAbort
from medfl.privacy import ddg_accountant as acc
from medfl.privacy.distributed_dp import ClientDP, conditional_round, decode_sum, encode_update


def _gaussian_epsilon(z: float, rounds: int, delta: float) -> float:
    a = dp_accounting.rdp.RdpAccountant(list(acc.ORDERS))
    a.compose(dp_accounting.GaussianDpEvent(z), rounds)
    return a.get_epsilon(delta)


@pytest.mark.parametrize(("z", "rounds"), [(0.8, 2), (1.0, 10), (3.0, 100)])
def test_large_sigma_matches_the_continuous_gaussian_of_dp_accounting(z, rounds):
    # tau vanishes for sigma >> 1, so n DG shares of sigma = z * Delta / sqrt(n) are the Gaussian mechanism at z
    delta, sens, n = 1e-5, 5000.0, 3
    rho = acc.round_rho(sensitivity=sens, sigma=z * sens / math.sqrt(n), n=n, dim=10**6)
    assert acc.epsilon([rho] * rounds, delta) == pytest.approx(_gaussian_epsilon(z, rounds, delta), rel=1e-9)


def test_tau_of_the_paper():
    assert acc.tau(1.0, 1) == 0.0
    assert acc.tau(1.0, 2) == pytest.approx(10 * math.exp(-math.pi ** 2))
    assert acc.tau(0.5, 3) == pytest.approx(10 * (math.exp(-math.pi ** 2 / 4) + math.exp(-math.pi ** 2 / 3)))


def test_small_sigma_pays_for_tau():
    # at sigma 0.5 the sum of DGs is far from a DG; the bound must be worse than the Gaussian's
    rho_small = acc.round_rho(sensitivity=1.0, sigma=0.5, n=10, dim=1000)
    assert rho_small > 0.5 * 1.0 / (10 * 0.25)


def test_sensitivity_bound_of_conditional_rounding():
    assert acc.rounded_sensitivity(clip=1.0, gamma=1.0, dim=4, beta=0.0) == pytest.approx(3.0)
    tight = 1 + 1 + math.sqrt(2 * 0.5) * (1 + 1)
    assert acc.rounded_sensitivity(clip=1.0, gamma=1.0, dim=4, beta=math.exp(-0.5)) == pytest.approx(math.sqrt(tight))
    with pytest.raises(ValueError):
        acc.rounded_sensitivity(clip=0.0, gamma=1.0, dim=4, beta=0.1)


def test_epsilon_at_three_sites_threshold_two():
    spec = ClientDP(clip=1.0, noise_multiplier=0.8, dim=100_000, threshold=2)
    worst = acc.epsilon([spec.round_rho(2)] * 2, 1e-5)
    everyone = acc.epsilon([spec.round_rho(3)] * 2, 1e-5)
    assert everyone < worst
    # the worst case is the Gaussian mechanism at z = 0.8 (the shares are sized for t)
    assert worst == pytest.approx(_gaussian_epsilon(0.8, 2, 1e-5), rel=1e-6)
    with pytest.raises(SecAggAbort, match="threshold"):
        spec.round_rho(1)


def test_conditional_rounding_is_unbiased_and_bounded():
    rng = np.random.default_rng(1)
    y = rng.normal(size=2000) * 3
    spec_bound = acc.rounded_sensitivity(clip=float(np.linalg.norm(y)), gamma=1.0, dim=y.size, beta=math.exp(-0.5))
    draws = np.stack([conditional_round(y, bound_sq=spec_bound ** 2) for _ in range(200)])
    assert (np.sum(draws.astype(np.float64) ** 2, axis=1) <= spec_bound ** 2).all()
    assert (np.abs(draws - y) < 1).all()
    assert abs(float((draws.mean(axis=0) - y).mean())) < 0.01


def test_conditional_rounding_refuses_an_impossible_bound():
    with pytest.raises(SecAggAbort, match="norm bound"):
        conditional_round(np.full(100, 0.5), bound_sq=1.0)


def test_encode_clips_and_the_sum_decodes_across_the_wrap():
    spec = ClientDP(clip=2.0, noise_multiplier=0.5, dim=5000, threshold=3)
    bits = spec.ring_bits_for(3)
    assert bits == 32
    rng = np.random.default_rng(2)
    xs = [rng.normal(size=spec.dim) * s for s in (0.001, 0.1, -5.0)]  # the last one is clipped
    enc = [encode_update(x, spec, ring_bits=bits) for x in xs]
    total = enc[0] + enc[1] + enc[2]  # uint32 arithmetic wraps like the secure sum
    got = decode_sum(total, spec)
    want = sum(x * min(1.0, spec.clip / np.linalg.norm(x)) for x in xs)
    err = got - want
    assert np.std(err) == pytest.approx(spec.noise_multiplier * spec.sensitivity * spec.gamma, rel=0.05)
    assert abs(float(err.mean())) < 5 * np.std(err) / math.sqrt(spec.dim)


def test_ring_bits_grow_with_the_federation():
    spec = ClientDP(clip=1.0, noise_multiplier=1.0, dim=10**7, threshold=2, granularity=65536)
    assert spec.ring_bits_for(2) == 64
    assert spec.modular_bound(10) > spec.modular_bound(2)


def test_bad_inputs_are_refused():
    spec = ClientDP(clip=1.0, noise_multiplier=1.0, dim=10, threshold=2)
    with pytest.raises(ValueError, match="10"):
        encode_update(np.zeros(11), spec, ring_bits=32)
    with pytest.raises(NonFiniteError, match="index 3"):
        encode_update(np.array([0, 0, 0, np.nan, 0, 0, 0, 0, 0, 0.0]), spec, ring_bits=32)
    with pytest.raises(ValueError, match="noise_multiplier"):
        ClientDP(clip=1.0, noise_multiplier=0.0, dim=10, threshold=2)
