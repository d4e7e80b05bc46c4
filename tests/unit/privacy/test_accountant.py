"""The accountant against dp-accounting's own accountants, and noise calibration for a target epsilon."""

from __future__ import annotations

import math

import dp_accounting
import pytest

from medfl.errors import NotFound
from medfl.privacy.accountant import Accountant, SgdRun, epsilon, make_accountant, noise_multiplier_for


def _reference(runs, delta, name):
    acc = make_accountant(name)
    acc.compose(dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(r.sample_rate, dp_accounting.GaussianDpEvent(r.noise_multiplier)),
            r.steps) for r in runs]))
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("q,sigma,steps", [(0.01, 1.1, 1000), (0.09, 1.0, 110), (0.25, 0.7, 40), (1.0, 5.0, 3),
                                           (0.004, 0.6, 1), (0.5, 20.0, 10000)])
@pytest.mark.parametrize("delta", [1e-5, 1e-3])
def test_rdp_epsilon_equals_dp_accounting(q, sigma, steps, delta):
    eps = epsilon([SgdRun(q, sigma, steps)], delta=delta, accountant="rdp")
    assert eps == pytest.approx(_reference([SgdRun(q, sigma, steps)], delta, "rdp"), rel=1e-12)
    assert eps > 0


@pytest.mark.parametrize("q,sigma,steps", [(0.09, 1.0, 20), (0.5, 2.0, 5)])
def test_pld_epsilon_equals_dp_accounting(q, sigma, steps):
    eps = epsilon([SgdRun(q, sigma, steps)], delta=1e-5, accountant="pld")
    assert eps == pytest.approx(_reference([SgdRun(q, sigma, steps)], 1e-5, "pld"), rel=1e-12)
    # PLD is the tighter analysis of the same mechanism
    assert eps < epsilon([SgdRun(q, sigma, steps)], delta=1e-5, accountant="rdp")


@pytest.mark.parametrize("name", ["rdp", "pld"])
def test_heterogeneous_history_composes_like_dp_accounting(name):
    runs = [SgdRun(0.05, 1.2, 7), SgdRun(0.2, 2.0, 3), SgdRun(0.05, 1.2, 4)]
    assert epsilon(runs, delta=1e-5, accountant=name) == pytest.approx(_reference(runs, 1e-5, name), rel=1e-12)


def test_running_accountant_reports_after_every_step():
    acc = Accountant(accountant="rdp")
    seen = []
    for k in range(1, 31):
        acc.step(sample_rate=0.1, noise_multiplier=1.0)
        seen.append(acc.epsilon(1e-5))
        if k in (1, 17, 30):
            assert seen[-1] == pytest.approx(_reference([SgdRun(0.1, 1.0, k)], 1e-5, "rdp"), rel=1e-12)
    assert all(b > a for a, b in zip(seen, seen[1:], strict=False))
    assert acc.runs == (SgdRun(0.1, 1.0, 30),) and acc.steps == 30
    acc.step(sample_rate=0.2, noise_multiplier=1.0, count=5)
    assert acc.runs[-1] == SgdRun(0.2, 1.0, 5) and acc.steps == 35
    fresh = make_accountant("rdp")
    fresh.compose(acc.event())
    assert acc.epsilon(1e-5) == pytest.approx(fresh.get_epsilon(1e-5), rel=1e-12)


def test_no_steps_spend_nothing():
    assert epsilon([], delta=1e-5) == 0.0
    assert epsilon([SgdRun(0.1, 1.0, 0)], delta=1e-5) == 0.0
    assert Accountant(runs=[SgdRun(0.1, 1.0, 0)]).epsilon(1e-5) == 0.0


@pytest.mark.parametrize("target", [0.5, 3.0, 10.0])
def test_noise_multiplier_for_target_is_tight_and_safe(target):
    q, steps, delta, tol = 0.05, 200, 1e-5, 1e-3
    sigma = noise_multiplier_for(target_epsilon=target, delta=delta, sample_rate=q, steps=steps, tol=tol)
    assert epsilon([SgdRun(q, sigma, steps)], delta=delta) <= target
    assert _reference([SgdRun(q, sigma, steps)], delta, "rdp") <= target
    assert epsilon([SgdRun(q, sigma - 3 * tol, steps)], delta=delta) > target  # not wastefully large


def test_noise_multiplier_for_counts_prior_rounds():
    prior = [SgdRun(0.05, 1.0, 100)]
    spent = epsilon(prior, delta=1e-5)
    alone = noise_multiplier_for(target_epsilon=spent + 1.0, delta=1e-5, sample_rate=0.05, steps=100)
    after = noise_multiplier_for(target_epsilon=spent + 1.0, delta=1e-5, sample_rate=0.05, steps=100, prior=prior)
    assert after > alone
    assert epsilon([*prior, SgdRun(0.05, after, 100)], delta=1e-5) <= spent + 1.0


def test_noise_multiplier_for_pld_is_below_rdp():
    kw = dict(target_epsilon=2.0, delta=1e-5, sample_rate=0.1, steps=20, tol=1e-2)
    s_pld = noise_multiplier_for(accountant="pld", **kw)
    assert s_pld < noise_multiplier_for(accountant="rdp", **kw)
    assert _reference([SgdRun(0.1, s_pld, 20)], 1e-5, "pld") <= 2.0


def test_bad_inputs_are_explained():
    with pytest.raises(NotFound, match="did you mean 'rdp'"):
        epsilon([SgdRun(0.1, 1.0, 1)], delta=1e-5, accountant="rpd")
    with pytest.raises(ValueError, match="delta"):
        epsilon([SgdRun(0.1, 1.0, 1)], delta=0.0)
    with pytest.raises(ValueError, match="sample_rate"):
        SgdRun(1.5, 1.0, 1)
    with pytest.raises(ValueError, match="noise_multiplier"):
        SgdRun(0.1, 0.0, 1)
    with pytest.raises(ValueError, match="noise_multiplier"):
        SgdRun(0.1, math.nan, 1)
    with pytest.raises(ValueError, match="steps"):
        SgdRun(0.1, 1.0, -1)
    with pytest.raises(ValueError, match="already spend"):
        noise_multiplier_for(target_epsilon=0.1, delta=1e-5, sample_rate=0.1, steps=1, prior=[SgdRun(0.5, 0.5, 100)])
    with pytest.raises(ValueError, match="raise target_epsilon"):
        noise_multiplier_for(target_epsilon=1e-6, delta=1e-10, sample_rate=1.0, steps=10**6)
