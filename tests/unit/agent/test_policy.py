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
