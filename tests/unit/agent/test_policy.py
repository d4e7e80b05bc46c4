"""The agent's local policy refuses jobs and rounds it does not allow, saying why."""

from __future__ import annotations

import pytest

from agent.config import PolicySection
from agent.policy import check_job, check_round
from medfl.errors import PolicyViolation
from medfl.jobspec import job_from_dict


def test_policy():
    policy = PolicySection(allowed_models=("cnn",), min_parties=3)
    check_job(policy, job_from_dict({"job": {"name": "ok", "model": "cnn", "min_agents": 3}}))
    with pytest.raises(PolicyViolation, match="allowed_models"):
        check_job(policy, job_from_dict({"job": {"name": "j", "model": "resnet18", "min_agents": 3}}))
    with pytest.raises(PolicyViolation, match="min_parties=3"):
        check_job(policy, job_from_dict({"job": {"name": "j", "model": "cnn", "min_agents": 2}}))
    check_round(policy, 3)
    with pytest.raises(PolicyViolation, match="2 participant"):
        check_round(policy, 2)


def test_policy_requires_secure_aggregation_by_default():
    plain = job_from_dict({"job": {"name": "p", "min_agents": 2}, "aggregation": {"secure": False}})
    secure = job_from_dict({"job": {"name": "s", "min_agents": 2}})
    assert secure.aggregation.secure and secure.aggregation.label == "secagg"
    strict = PolicySection()
    assert strict.require_secure_aggregation
    check_job(strict, secure)
    with pytest.raises(PolicyViolation, match="require_secure_aggregation = true"):
        check_job(strict, plain)
    check_job(PolicySection(require_secure_aggregation=False), plain)


def test_policy_refuses_a_threshold_below_min_parties():
    policy = PolicySection(min_parties=3)
    low = job_from_dict({"job": {"name": "t", "min_agents": 3}, "aggregation": {"threshold": 2}})
    with pytest.raises(PolicyViolation, match="threshold=2"):
        check_job(policy, low)
    check_job(policy, job_from_dict({"job": {"name": "t", "min_agents": 3}, "aggregation": {"threshold": 3}}))


def _client_job(*, level: str, z: float | None, rounds: int = 2, secure: bool = True):
    import dataclasses

    base = job_from_dict({"job": {"name": "c", "min_agents": 2, "rounds": rounds},
                          "aggregation": {"secure": secure}})
    privacy = dataclasses.replace(base.privacy, enabled=True, level=level, client_noise_multiplier=z,
                                  noise_multiplier=1.0 if level != "client" else None)
    return dataclasses.replace(base, privacy=privacy)


def test_policy_requires_client_level_dp():
    policy = PolicySection(require_client_dp=True)
    with pytest.raises(PolicyViolation, match="no client-level DP.*require_client_dp = true"):
        check_job(policy, job_from_dict({"job": {"name": "s", "min_agents": 2}}))
    with pytest.raises(PolicyViolation, match="level = 'sample'"):
        check_job(policy, _client_job(level="sample", z=None))
    check_job(policy, _client_job(level="client", z=1.0))
    check_job(policy, _client_job(level="both", z=1.0))
    with pytest.raises(PolicyViolation, match="without secure aggregation"):
        check_job(PolicySection(require_secure_aggregation=False), _client_job(level="client", z=1.0, secure=False))


def test_policy_caps_the_planned_client_epsilon():
    from medfl.privacy.ddg_accountant import planned_epsilon

    eps = planned_epsilon(noise_multiplier=0.8, rounds=2, delta=1e-5)
    assert 9.0 < eps < 9.5  # 9.23: the Gaussian mechanism at z = 0.8, twice (worst case: t survivors)
    check_job(PolicySection(max_client_epsilon=9.5), _client_job(level="client", z=0.8))
    with pytest.raises(PolicyViolation, match=r"client-level epsilon=9\.23.*max_client_epsilon=5"):
        check_job(PolicySection(max_client_epsilon=5.0), _client_job(level="client", z=0.8))
    check_job(PolicySection(max_client_epsilon=5.0), _client_job(level="client", z=3.0, rounds=5))


def test_a_sample_level_budget_refuses_a_client_only_job():
    # the ledger counts DP-SGD: a client-only job under a per-job epsilon cap is refused with the way out
    with pytest.raises(PolicyViolation, match="client-level DP only.*level = \"both\""):
        check_job(PolicySection(max_epsilon_per_job=8.0), _client_job(level="client", z=1.0))
    check_job(PolicySection(max_epsilon_per_job=8.0, max_client_epsilon=20.0), _client_job(level="both", z=1.0))


def test_client_level_jobs_parse_and_need_secure_aggregation():
    from medfl.errors import ConfigError

    job = job_from_dict({"job": {"name": "c", "min_agents": 2},
                         "privacy": {"level": "client", "client_noise_multiplier": 1.0}})
    assert job.privacy.client_level and not job.privacy.sample_level
    both = job_from_dict({"job": {"name": "c", "min_agents": 2},
                          "privacy": {"level": "both", "client_noise_multiplier": 1.0, "noise_multiplier": 1.0}})
    assert both.privacy.client_level and both.privacy.sample_level
    with pytest.raises(ConfigError, match="inside secure aggregation"):
        job_from_dict({"job": {"name": "c", "min_agents": 2}, "aggregation": {"secure": False},
                       "privacy": {"level": "client", "client_noise_multiplier": 1.0}})
    with pytest.raises(ConfigError, match="client_noise_multiplier"):
        job_from_dict({"job": {"name": "c", "min_agents": 2}, "privacy": {"level": "client"}})
    with pytest.raises(ConfigError, match="level"):
        job_from_dict({"job": {"name": "c", "min_agents": 2},
                       "privacy": {"level": "clients", "noise_multiplier": 1.0}})


def test_offers_keep_the_old_layout_at_default_levels():
    job = job_from_dict({"job": {"name": "s", "min_agents": 2}, "privacy": {"noise_multiplier": 1.0}})
    assert "level" not in job.to_dict()["privacy"]
    assert job_from_dict(job.to_dict()) == job
