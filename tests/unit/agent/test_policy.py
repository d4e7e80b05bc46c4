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
