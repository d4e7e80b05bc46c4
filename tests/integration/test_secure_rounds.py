"""Secure aggregation in real federated rounds: agent and coordinator processes over CurveZMQ on loopback."""

from __future__ import annotations

import signal

import numpy as np
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECURE = """
[aggregation]
secure = true
clip_norm = 100.0
frac_bits = 32
"""
PLAIN = """
[aggregation]
secure = false
"""


def _events(fed, job_id):
    store = fed.store()
    try:
        return store.events(job_id, limit=200)
    finally:
        store.close()


def _allow_plain(fed, name):
    cfg = fed.root / name / "agent.toml"
    text = cfg.read_text()
    assert "require_secure_aggregation = true" in text  # agent init writes the secure default
    cfg.write_text(text.replace("require_secure_aggregation = true", "require_secure_aggregation = false"))


def _wait_daemon(fed, what, *needles, timeout=90):
    store = fed.store()
    try:
        fed.wait_for(what, lambda: all(n in (store.get_meta("daemon") or "") for n in needles), timeout=timeout,
                     every=0.05)
    finally:
        store.close()


def test_secure_round_gives_the_plain_fedavg_model(federation):
    """The same job, secure and plain: the global models agree within the quantization error."""
    fed = federation
    names = ["h-a", "h-b", "h-c"]
    for i, n in enumerate(names):
        fed.add_agent(n, seed=i, n_train=32 + 16 * i)
        _allow_plain(fed, n)
    fed.start_coordinator()
    for n in names:
        fed.start_agent(n)
    fed.wait_online(3)
    secure_id = fed.submit(rounds=1, min_agents=3, extra=SECURE)
    plain_id = fed.submit(rounds=1, min_agents=3, extra=PLAIN)
    for job_id in (secure_id, plain_id):
        job = fed.wait_job(job_id)
        assert job.status == "done", job.message
    from medfl.models.weights import load_checkpoint

    secure_row, plain_row = fed.rounds(secure_id)[0], fed.rounds(plain_id)[0]
    assert secure_row.agents == plain_row.agents == 3
    assert secure_row.num_samples == plain_row.num_samples == 32 + 48 + 64  # sample counts summed securely
    # the loss travels as u * loss / 100 with 2^-32 resolution: 3 roundings / total weight 0.0144 x 100
    assert secure_row.train_loss == pytest.approx(plain_row.train_loss, abs=2 * 3 * 2.0**-32 * 100 / 0.0144)
    assert secure_row.val_auc == pytest.approx(plain_row.val_auc, abs=1e-4)
    assert secure_row.val_samples == plain_row.val_samples
    secure_model, _ = load_checkpoint(secure_row.checkpoint)
    plain_model, _ = load_checkpoint(plain_row.checkpoint)
    # 3 stochastic roundings of 2^-32 over a total weight of 144/10000, plus float32 rounding
    for k in plain_model:
        np.testing.assert_allclose(secure_model[k], plain_model[k], rtol=1e-5, atol=1e-6)
    initial, _ = load_checkpoint(fed.coord_dir / "state" / "checkpoints" / secure_id / "round-0000.safetensors")
    assert any(not np.allclose(secure_model[k], initial[k]) for k in initial)  # training moved the model
    log = fed.log("coordinator")
    assert "secagg aggregation" in log and "secure sum of 3 agents unmasked" in log
    for n in names:  # the agents never sent an UPDATE or METRICS in the secure job
        assert "(sent masked)" in fed.log(n)


def test_agent_killed_after_sharing_keys_round_completes(federation):
    fed = federation
    fed.add_agent("h-a", seed=0)
    fed.add_agent("h-b", seed=1)
    fed.add_agent("slow", seed=2, n_train=1500)  # still training when it is killed
    fed.start_coordinator()
    for n in ("h-a", "h-b", "slow"):
        fed.start_agent(n)
    fed.wait_online(3)
    job_id = fed.submit(rounds=1, min_agents=2, deadline_s=120)
    _wait_daemon(fed, "the three agents to share their keys", "3 in round", "secagg fit:collect")
    fed.kill("slow", signal.SIGKILL)
    job = fed.wait_job(job_id, timeout=120)
    assert job.status == "done", job.message
    row = fed.rounds(job_id)[0]
    assert row.agents == 2 and row.agent_names == ("h-a", "h-b") and row.attempts == 1
    assert row.num_samples == 96 and row.val_auc is not None
    assert "1 agent(s) dropped after sharing keys" in fed.log("coordinator")


def test_below_threshold_aborts_and_the_round_is_retried(federation):
    fed = federation
    fed.add_agent("h-a", seed=0)
    fed.add_agent("h-b", seed=1)
    fed.add_agent("slow", seed=2, n_train=1500)
    fed.start_coordinator()
    for n in ("h-a", "h-b", "slow"):
        fed.start_agent(n)
    fed.wait_online(3)
    job_id = fed.submit(rounds=1, min_agents=3, deadline_s=120, extra="[aggregation]\nthreshold = 3\n")
    _wait_daemon(fed, "the three agents to share their keys", "3 in round", "secagg fit:collect")
    fed.kill("slow", signal.SIGKILL)
    fed.wait_for("the round to abort", lambda: any(e["kind"] == "retry" for e in _events(fed, job_id)), timeout=60)
    retry = next(e for e in _events(fed, job_id) if e["kind"] == "retry")
    assert "below the threshold t=3" in retry["detail"]
    fed.start_agent("slow")  # the hospital comes back: attempt 2 runs with fresh keys and completes
    job = fed.wait_job(job_id, timeout=180)
    assert job.status == "done", job.message
    row = fed.rounds(job_id)[0]
    assert row.attempts == 2 and row.agents == 3


def test_agent_requiring_secure_aggregation_refuses_a_plain_job(federation):
    fed = federation
    for i, n in enumerate(["h-a", "h-b", "strict"]):
        fed.add_agent(n, seed=i)
    _allow_plain(fed, "h-a")
    _allow_plain(fed, "h-b")
    fed.start_coordinator()
    for n in ("h-a", "h-b", "strict"):
        fed.start_agent(n)
    fed.wait_online(3)
    job_id = fed.submit(rounds=1, min_agents=2, extra=PLAIN)
    job = fed.wait_job(job_id)
    assert job.status == "done", job.message
    assert fed.rounds(job_id)[0].agent_names == ("h-a", "h-b")
    status = fed.coordinator("status")
    assert "refused" in status and "require_secure_aggregation" in status and "(plain aggregation)" in status
    assert "refusing job" in fed.log("strict")
