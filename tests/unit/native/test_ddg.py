"""The discrete Gaussian noise kernel (csrc/ddg) against its NumPy reference and the exact pmf."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from medfl import native
from medfl.native.ddg import add_discrete_gaussian
from medfl.native.reference.ddg import discrete_gaussian_reference
from medfl.privacy import discrete_gaussian

needs_native = pytest.mark.skipif(native.native_module() is None or
                                  not hasattr(native.native_module(), "add_discrete_gaussian"),
                                  reason="medfl._native has no add_discrete_gaussian")
KEY = bytes(range(32))


@needs_native
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.5, 37.3, 1000.0, 1.5e6])
@pytest.mark.parametrize("n", [1, 1023, 1025, 4097])
def test_native_matches_reference(sigma, n):
    v = np.zeros(n, dtype=np.uint64)
    add_discrete_gaussian(v, sigma=sigma, key=KEY)
    np.testing.assert_array_equal(v.view(np.int64), discrete_gaussian_reference(n, sigma, KEY))


@needs_native
def test_adds_in_place_and_wraps_in_a_32_bit_ring():
    base = np.array([0, 1, 2**32 - 1, 2**31] * 500, dtype=np.uint32)
    v = base.copy()
    add_discrete_gaussian(v, sigma=50.0, key=KEY)
    noise = discrete_gaussian_reference(v.size, 50.0, KEY)
    np.testing.assert_array_equal(v, ((base.astype(np.int64) + noise) % 2**32).astype(np.uint32))


def test_reference_path_when_forced(monkeypatch):
    from medfl.native import backend

    monkeypatch.setattr(backend, "forced", lambda: "reference")
    v = np.zeros(3000, dtype=np.uint32)
    add_discrete_gaussian(v, sigma=9.0, key=KEY)
    np.testing.assert_array_equal(v.view(np.int32), discrete_gaussian_reference(3000, 9.0, KEY))


def test_fresh_keys_differ():
    a, b = np.zeros(64, np.uint64), np.zeros(64, np.uint64)
    add_discrete_gaussian(a, sigma=100.0)
    add_discrete_gaussian(b, sigma=100.0)
    assert (a != b).any()


@needs_native
@pytest.mark.parametrize("sigma", [0.5, 1.7, 6.0])
def test_chi_square_against_exact_pmf(sigma):
    n = 200_000
    v = np.zeros(n, np.uint64)
    add_discrete_gaussian(v, sigma=sigma, key=bytes([7]) * 32)
    x = v.view(np.int64)
    lo, hi = -math.ceil(4 * sigma), math.ceil(4 * sigma)
    support = np.arange(lo, hi + 1)
    expected = discrete_gaussian.pmf(support, sigma) * n
    observed = np.array([(x == k).sum() for k in support], dtype=np.float64)
    tails_obs = n - observed.sum()
    tails_exp = n - expected.sum()
    keep = expected >= 5
    obs = np.append(observed[keep], tails_obs + observed[~keep].sum())
    exp = np.append(expected[keep], tails_exp + expected[~keep].sum())
    _, p = stats.chisquare(obs, exp)
    assert p > 1e-4, f"chi-square p={p} at sigma={sigma}"


@needs_native
def test_large_sigma_moments_and_ks():
    sigma, n = 4000.0, 400_000
    v = np.zeros(n, np.uint64)
    add_discrete_gaussian(v, sigma=sigma, key=bytes([9]) * 32)
    x = v.view(np.int64).astype(np.float64)
    assert abs(x.mean()) < 5 * sigma / math.sqrt(n)
    assert abs(x.var() / discrete_gaussian.variance(sigma) - 1) < 5 * math.sqrt(2 / n)
    # at this sigma the DG CDF equals the normal CDF at half-integers to ~1e-12
    _, p = stats.kstest(x + 0.5 - np.random.default_rng(0).random(n), stats.norm(scale=sigma).cdf)
    assert p > 1e-4


@pytest.mark.parametrize("sigma", [0.0, 0.49, float("nan"), float("inf"), 2e12])
def test_bad_sigma_is_refused(sigma):
    with pytest.raises(ValueError, match="sigma"):
        add_discrete_gaussian(np.zeros(4, np.uint64), sigma=sigma, key=KEY)


def test_bad_dtype_and_key_are_refused():
    with pytest.raises(ValueError, match="uint32 or uint64"):
        add_discrete_gaussian(np.zeros(4, np.int64), sigma=3.0, key=KEY)
    with pytest.raises(ValueError, match="32 bytes"):
        add_discrete_gaussian(np.zeros(4, np.uint64), sigma=3.0, key=b"short")


@pytest.mark.gpu
def test_cuda_matches_reference(cuda):
    import torch

    n = 70_000
    v = torch.zeros(n, dtype=torch.uint64, device="cuda")
    add_discrete_gaussian(v, sigma=123.4, key=KEY)
    got = v.cpu().numpy().view(np.int64)
    ref = discrete_gaussian_reference(n, 123.4, KEY)
    assert (got != ref).mean() < 1e-4  # the device libm may differ in the last ulp
