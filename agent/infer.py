"""``medfl-agent infer --encrypted``: this hospital as data owner of an encrypted-inference session.

The agent connects out to the model server of agent.toml's ``[inference]`` table (the
coordinator hosts one by default), pins its key, accepts only the dealers it trusts, and
runs the session with :func:`medfl.smpc.session.client.infer_remote`. The model server never sees
the image and the agent never sees the weights; only the agent sees the score.

References
----------
.. [1] Ryffel et al., "AriaNN", PoPETs 2022.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import zmq

from agent.config import AgentConfig
from agent.policy import check_inference
from medfl.errors import AuthError, ConfigError
from medfl.inference import read_images, summarize
from medfl.smpc.session.client import infer_remote
from medfl.wire import ClientChannel, read_keypair, read_public_key

__all__ = ["encrypted_scores", "model_server_endpoint", "run_agent_infer"]


def model_server_endpoint(cfg: AgentConfig) -> str:
    """``[inference] endpoint``, or the coordinator's host on port 7778 (where ``serve`` hosts it)."""
    if cfg.inference.endpoint:
        return cfg.inference.endpoint
    head, sep, port = cfg.coordinator.endpoint.rpartition(":")
    if not sep or not port.isdigit() or not head.startswith("tcp://"):
        raise ConfigError([("inference.endpoint", "not set and cannot be derived from coordinator.endpoint "
                                                  f"{cfg.coordinator.endpoint!r}; set the model server's endpoint")])
    return f"{head}:7778"


def _session(cfg: AgentConfig, images: Sequence[np.ndarray]) -> Any:
    inf = cfg.inference
    check_inference(cfg.policy, inf, inf.model)
    server_key_file = inf.model_server_key_file or cfg.coordinator.public_key_file
    if server_key_file is None or cfg.keys.secret_key_file is None:
        raise AuthError("encrypted inference needs keys.secret_key_file and inference.model_server_key_file "
                        "(or coordinator.public_key_file) in agent.toml")
    trusted = {bytes(zmq.utils.z85.decode(read_public_key(k))) for k in inf.trusted_dealers}
    with ClientChannel(connect=model_server_endpoint(cfg), keys=read_keypair(cfg.keys.secret_key_file),
                       server_public_key=read_public_key(server_key_file)) as ch:
        return infer_remote(channel=ch, model=inf.model, images=images, trusted_dealers=trusted,
                            timeout_s=inf.timeout_s)


def encrypted_scores(cfg: AgentConfig, images: Sequence[np.ndarray]) -> list[float]:
    """Positive-class probabilities of preprocessed (1, H, W) images by encrypted inference."""
    return [im.score for im in _session(cfg, images).images]


def run_agent_infer(cfg: AgentConfig, paths: Sequence[pathlib.Path]) -> dict[str, Any]:
    """Read images as training does, run one session, return the JSON summary of :func:`medfl.inference.summarize`."""
    images = read_images(paths, cfg.inference.image_size)
    report = _session(cfg, images)
    out: dict[str, Any] = {"mode": "2pc+dealer", "model": cfg.inference.model, "image_size": cfg.inference.image_size,
                           "images": []}
    return summarize(report, paths, None, out)
