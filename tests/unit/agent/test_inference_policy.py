"""The agent's encrypted-inference policy and where it finds the model server."""

from __future__ import annotations

import pytest

from agent.config import AgentConfig
from agent.infer import model_server_endpoint
from agent.policy import check_inference
from medfl import config
from medfl.errors import ConfigError, PolicyViolation


def _cfg(tmp_path, **inference):
    return config.parse(AgentConfig, {
        "agent": {"name": "h", "state_dir": str(tmp_path / "state")},
        "coordinator": {"endpoint": "tcp://fl.example.org:7777"}, "data": {"path": str(tmp_path)},
        "transport": {"curve": False}, "inference": inference})


def test_encrypted_inference_is_off_unless_the_hospital_allows_it(tmp_path):
    cfg = _cfg(tmp_path)
    with pytest.raises(PolicyViolation, match="allow_encrypted=false"):
        check_inference(cfg.policy, cfg.inference, "cnn")


def test_model_and_dealers_must_be_allowed(tmp_path):
    cfg = _cfg(tmp_path, allow_encrypted=True, trusted_dealers=["keys/dealer.key"])
    check_inference(cfg.policy, cfg.inference, "cnn")
    with pytest.raises(PolicyViolation, match="allowed_models"):
        check_inference(cfg.policy, cfg.inference, "resnet50")
    cfg = _cfg(tmp_path, allow_encrypted=True)
    with pytest.raises(PolicyViolation, match="trusted_dealers is empty"):
        check_inference(cfg.policy, cfg.inference, "cnn")


def test_endpoint_defaults_to_the_coordinators_host(tmp_path):
    assert model_server_endpoint(_cfg(tmp_path)) == "tcp://fl.example.org:7778"
    assert model_server_endpoint(_cfg(tmp_path, endpoint="tcp://ms:9000")) == "tcp://ms:9000"
    with pytest.raises(ConfigError, match="inference.image_size"):
        _cfg(tmp_path, image_size=8)
