"""A federation of real processes on loopback, CurveZMQ on: the paths a hospital network takes."""

from __future__ import annotations

import pathlib
import signal

import numpy as np
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_three_agents_train_to_completion(federation):
    fed = federation
    names = ["h-a", "h-b", "h-c"]
    for i, n in enumerate(names):
        fed.add_agent(n, seed=i)
    fed.start_coordinator()
    for n in names:
        fed.start_agent(n)
    job_id = fed.submit(rounds=2, min_agents=3)
    job = fed.wait_job(job_id)
    assert job.status == "done", job.message
    rounds = fed.rounds(job_id)
    assert [r.round for r in rounds] == [1, 2]
    assert all(r.agents == 3 and sorted(r.agent_names) == names for r in rounds)
    assert all(r.val_auc is not None and 0.0 <= r.val_auc <= 1.0 for r in rounds)
    from medfl.models.weights import load_checkpoint

    previous = None
    for r in rounds:
        arrays, meta = load_checkpoint(r.checkpoint)
        assert meta["job_id"] == job_id and int(meta["round"]) == r.round
        if previous is not None:  # the model moved between rounds
            assert any(not np.array_equal(arrays[k], previous[k]) for k in arrays)
        previous = arrays
    # the operator's view agrees
    status = fed.status()
    job_view = next(j for j in status["jobs"] if j["id"] == job_id)
    assert job_view["rounds_done"] == 2 and job_view["status"] == "done"
    assert all(n["status"] == "approved" for n in status["nodes"])


def test_agent_killed_mid_round_round_completes_with_survivors(federation):
    fed = federation
    fed.add_agent("h-a", seed=0)
    fed.add_agent("h-b", seed=1)
    fed.add_agent("slow", seed=2, n_train=1500)  # trains for seconds: it is still busy when we kill it
    fed.start_coordinator()
    for n in ("h-a", "h-b", "slow"):
        fed.start_agent(n)
    fed.wait_online(3)
    job_id = fed.submit(rounds=2, min_agents=2, deadline_s=20)
    store = fed.store()
    try:
        fed.wait_for("round 1 to start with 3 agents",
                     lambda: "round 1/2 attempt 1 fit" in (store.get_meta("daemon") or "")
                     and "3 in round" in (store.get_meta("daemon") or ""), timeout=60, every=0.05)
    finally:
        store.close()
    fed.kill("slow", signal.SIGKILL)
    job = fed.wait_job(job_id)
    assert job.status == "done", job.message
    rounds = fed.rounds(job_id)
    assert rounds[0].agents == 2 and sorted(rounds[0].agent_names) == ["h-a", "h-b"]
    assert rounds[1].agents == 2


def test_coordinator_sigkill_mid_job_resumes(federation):
    fed = federation
    names = ["h-a", "h-b", "h-c"]
    for i, n in enumerate(names):
        fed.add_agent(n, seed=i, n_train=160)
    fed.start_coordinator()
    for n in names:
        fed.start_agent(n)
    job_id = fed.submit(rounds=4, min_agents=3)
    fed.wait_for("round 1 to complete", lambda: len(fed.rounds(job_id)) >= 1, timeout=120, every=0.05)
    fed.kill("coordinator", signal.SIGKILL)
    done_before = len(fed.rounds(job_id))
    assert done_before < 4, "the job finished before the kill; make rounds slower"
    fed.start_coordinator()
    job = fed.wait_job(job_id, timeout=240)
    assert job.status == "done", job.message
    rounds = fed.rounds(job_id)
    assert [r.round for r in rounds] == [1, 2, 3, 4]
    from medfl.models.weights import load_checkpoint

    for r in rounds:
        assert pathlib.Path(r.checkpoint).exists()
        _, meta = load_checkpoint(r.checkpoint)
        assert int(meta["round"]) == r.round
    assert "resuming after round" in fed.log("coordinator")
    store = fed.store()
    try:
        assert any(e["kind"] == "resumed" for e in store.events(job_id, limit=100))
    finally:
        store.close()


def test_unapproved_agent_is_refused_and_learns_nothing(federation):
    fed = federation
    names = ["h-a", "h-b", "h-c"]
    for i, n in enumerate(names):
        fed.add_agent(n, seed=i)
    fed.add_agent("intruder", seed=3, approve=False)
    fed.start_coordinator()
    fed.start_agent("intruder")
    for n in names:
        fed.start_agent(n)
    job_id = fed.submit(rounds=1, min_agents=3)
    job = fed.wait_job(job_id)
    assert job.status == "done"
    rounds = fed.rounds(job_id)
    assert "intruder" not in rounds[0].agent_names
    listing = fed.coordinator("nodes", "list")
    intruder_line = next(line for line in listing.splitlines() if line.startswith("pending"))
    fp = fed.run_cli("agent.cli", "fingerprint", "--config", str(fed.root / "intruder" / "agent.toml")).stdout.strip()
    assert fp in intruder_line
    log = fed.log("intruder")
    assert "welcomed" not in log and "accepted job" not in log and "trained" not in log
    assert f"refused handshake from unapproved key {fp}" in fed.log("coordinator")


def test_agent_policy_refuses_a_job_and_the_operator_sees_why(federation):
    fed = federation
    for i, n in enumerate(["h-a", "h-b", "picky"]):
        fed.add_agent(n, seed=i)
    cfg = fed.root / "picky" / "agent.toml"
    cfg.write_text(cfg.read_text().replace('allowed_models = [\n    "cnn",\n    "resnet18",\n]',
                                           'allowed_models = ["resnet18"]'))
    assert 'allowed_models = ["resnet18"]' in cfg.read_text()
    fed.start_coordinator()
    for n in ("h-a", "h-b", "picky"):
        fed.start_agent(n)
    fed.wait_online(3)
    job_id = fed.submit(rounds=1, min_agents=2)
    job = fed.wait_job(job_id)
    assert job.status == "done"
    assert fed.rounds(job_id)[0].agent_names == ("h-a", "h-b")
    status = fed.coordinator("status")
    assert "refused" in status and "allowed_models" in status
    assert "refusing job" in fed.log("picky")
