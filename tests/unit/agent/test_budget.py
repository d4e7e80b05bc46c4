"""The agent's privacy policy and budget: job [privacy] parsing, offers and rounds refused with the reason."""

from __future__ import annotations

import pytest

from agent.budget import Budget
from agent.config import PolicySection
from agent.policy import check_job
from medfl.errors import ConfigError, PolicyViolation
from medfl.jobspec import job_from_dict
from medfl.privacy.accountant import SgdRun, epsilon
from medfl.privacy.ledger import Ledger


def _job(privacy=None, rounds=3, **training):
    d = {"job": {"name": "j", "model": "cnn", "min_agents": 2, "rounds": rounds},
         "training": {"batch_size": 20, "local_epochs": 1, **training}}
    if privacy is not None:
        d["privacy"] = privacy
    return job_from_dict(d)


def test_privacy_section_parsing():
    assert not _job().privacy.enabled  # no table: no DP (what such files always meant)
    spec = _job({"noise_multiplier": 1, "max_grad_norm": 2.0})
    assert spec.privacy.enabled and spec.privacy.noise_multiplier == 1.0 and spec.privacy.accountant == "rdp"
    assert not _job({"enabled": False}).privacy.enabled
    assert job_from_dict(spec.to_dict()) == spec  # survives the coordinator's store and the JOB_OFFER
    with pytest.raises(ConfigError) as err:
        _job({"noise_multiplier": 1.0, "target_epsilon": 3.0, "delta": 2.0, "accountant": "pdl"})
    text = str(err.value)
    assert "exactly one of noise_multiplier and target_epsilon" in text and "privacy.delta" in text
    assert "did you mean 'pld'" in text
    with pytest.raises(ConfigError, match="exactly one"):
        _job({"max_grad_norm": 1.0})


def test_offer_checks():
    strict = PolicySection(max_epsilon_per_job=3.0, max_delta=1e-5)
    with pytest.raises(PolicyViolation, match="without differential privacy"):
        check_job(strict, _job())
    with pytest.raises(PolicyViolation, match=r"asks epsilon=8 but agent.toml policy.max_epsilon_per_job=3"):
        check_job(strict, _job({"target_epsilon": 8.0}))
    with pytest.raises(PolicyViolation, match="max_delta"):
        check_job(strict, _job({"noise_multiplier": 1.0, "delta": 1e-3}))
    check_job(strict, _job({"target_epsilon": 3.0}))
    check_job(PolicySection(), _job())  # no limits: jobs without DP are fine


def _budget(policy, ledger=None):
    return Budget(ledger=ledger or Ledger(":memory:"), dataset="folder:/data", policy=policy)


def test_round_plan_and_refusal_when_the_job_budget_would_be_exceeded():
    spec = _job({"noise_multiplier": 1.0}, local_epochs=2)
    one_round = epsilon([SgdRun(0.1, 1.0, 20)], delta=1e-5)
    two_rounds = epsilon([SgdRun(0.1, 1.0, 40)], delta=1e-5)
    budget = _budget(PolicySection(max_epsilon_per_job=(one_round + two_rounds) / 2))
    plan = budget.plan(spec, n_train=200)
    assert (plan.sample_rate, plan.noise_multiplier, plan.steps) == (0.1, 1.0, 20)
    job_eps, total = budget.check("job-1", spec, plan, round=1)
    assert job_eps == pytest.approx(one_round) and total == pytest.approx(one_round)
    assert budget.record("job-1", plan, round=1, attempt=1) == pytest.approx(one_round)
    with pytest.raises(PolicyViolation, match=r"round 2 of job 'j' would bring its epsilon to .*max_epsilon_per_job"):
        budget.check("job-1", spec, plan, round=2)
    # another job on the same data starts from a fresh job budget
    budget.check("job-2", spec, plan, round=1)


def test_total_budget_spans_jobs_and_survives_a_restart(tmp_path):
    spec = _job({"noise_multiplier": 1.0})
    path = tmp_path / "ledger.sqlite"
    per_round = epsilon([SgdRun(0.1, 1.0, 10)], delta=1e-5)
    policy = PolicySection(max_total_epsilon=1.05 * epsilon([SgdRun(0.1, 1.0, 20)], delta=1e-5))
    budget = _budget(policy, Ledger(path))
    plan = budget.plan(spec, n_train=200)
    budget.check("job-1", spec, plan, round=1)
    budget.record("job-1", plan, round=1, attempt=1)
    budget.ledger.close()
    budget = _budget(policy, Ledger(path))  # the agent restarted
    _, total = budget.check("job-2", spec, plan, round=1)
    assert total > per_round
    budget.record("job-2", plan, round=1, attempt=1)
    with pytest.raises(PolicyViolation, match="total epsilon over all jobs"):
        budget.check("job-3", spec, plan, round=1)


def test_target_epsilon_covers_every_round_and_retries_are_refused():
    spec = _job({"target_epsilon": 2.0}, rounds=3)
    budget = _budget(PolicySection())
    plan = budget.plan(spec, n_train=200)
    assert budget.plan(spec, n_train=200) == plan  # same sigma every round
    for rnd in (1, 2, 3):
        budget.check("job-1", spec, plan, round=rnd)
        eps = budget.record("job-1", plan, round=rnd, attempt=1)
    assert 1.9 < eps <= 2.0
    with pytest.raises(PolicyViolation, match="target_epsilon=2"):
        budget.check("job-1", spec, plan, round=3)  # a retried round would overspend the job's own target
