"""The round state machine, driven without a network by a fake clock."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.rounds import JobRun, Stage
from coordinator.store import Store
from medfl.errors import OutOfOrder
from medfl.jobspec import job_from_dict
from medfl.wire import Envelope, MessageType


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _spec(**job):
    base = {"name": "t", "model": "cnn", "rounds": 2, "min_agents": 2, "round_deadline_s": 10.0,
            "max_round_retries": 1, "image_size": 32}
    base.update(job)
    # the plain path (the explicit opt-out); secure rounds are in test_secure_rounds.py
    return job_from_dict({"job": base, "aggregation": {"secure": False}})


@pytest.fixture
def env(tmp_path):
    store = Store(":memory:")
    row = store.submit_job({"job": {"name": "t"}})
    clock = Clock()
    yield store, row.id, clock, tmp_path
    store.close()


def _run(env, **job):
    store, job_id, clock, tmp = env
    run = JobRun(job_id=job_id, spec=_spec(**job), store=store, checkpoint_dir=tmp, eval_deadline_s=5, clock=clock)
    run.start()
    return run


def _update(run, fp, scale=1.0, n=10, rnd=None):
    tensors = {k: (v + scale).astype(np.float32) for k, v in run.global_arrays.items()}
    return run.on_update(fp, Envelope(type=MessageType.UPDATE, job=run.job_id, round=rnd or run.state.round,
                                      body={"num_samples": n, "train_loss": 0.5}, tensors=tensors))


def _metrics(run, fp, auc):
    return run.on_metrics(fp, Envelope(type=MessageType.METRICS, job=run.job_id, round=run.state.round,
                                       body={"n": 10, "auc": auc, "accuracy": 0.7, "loss": 0.6}))


def test_full_job_with_a_straggler(env):
    store, job_id, clock, _ = env
    run = _run(env)
    for fp in ("a", "b", "c"):
        assert run.offer(fp)[0][1].type == MessageType.JOB_OFFER
        run.on_accept(fp, fp.upper())
    out = run.tick({"a", "b", "c"})
    assert run.state.stage == Stage.FIT and sorted(fp for fp, _ in out) == ["a", "b", "c"]
    assert out[0][1].type == MessageType.TRAIN and out[0][1].body["participants"] == 3
    assert _update(run, "a", 1.0, n=10) == []
    assert _update(run, "b", 3.0, n=30) == []
    clock.t = 11  # c never answers: the deadline closes the round with a and b
    out = run.tick({"a", "b", "c"})
    assert run.state.stage == Stage.EVALUATE and sorted(fp for fp, _ in out) == ["a", "b"]
    candidate = out[0][1].tensors
    name = next(iter(candidate))
    np.testing.assert_allclose(candidate[name], run.global_arrays[name] + 2.5, rtol=1e-6)
    _metrics(run, "a", 0.8)
    _metrics(run, "b", 0.9)
    assert run.state.stage == Stage.WAITING and run.state.round == 2
    rows = store.rounds(job_id)
    assert rows[0].agents == 2 and rows[0].agent_names == ("A", "B") and rows[0].val_auc == pytest.approx(0.85)
    run.tick({"a", "b"})
    _update(run, "a")
    _update(run, "b")
    _metrics(run, "a", 0.9)
    _metrics(run, "b", 0.9)
    assert run.finished and run.state.stage == Stage.DONE
    assert [r.round for r in store.rounds(job_id)] == [1, 2]


def test_out_of_order_messages_are_rejected_without_state_change(env):
    run = _run(env)
    for fp in ("a", "b"):
        run.on_accept(fp, fp)
    with pytest.raises(OutOfOrder):  # no round open yet
        _update(run, "a")
    run.tick({"a", "b"})
    with pytest.raises(OutOfOrder, match="round"):
        _update(run, "a", rnd=7)
    with pytest.raises(OutOfOrder, match="not a participant"):
        _update(run, "zz")
    with pytest.raises(OutOfOrder):
        _metrics(run, "a", 0.5)
    assert run.state.updates == {} and run.state.stage == Stage.FIT


def test_too_few_updates_retry_then_fail(env):
    store, job_id, clock, _ = env
    run = _run(env)
    for fp in ("a", "b"):
        run.on_accept(fp, fp)
    run.tick({"a", "b"})
    _update(run, "a")
    clock.t = 11
    run.tick({"a", "b"})
    assert run.state.stage == Stage.WAITING and run.state.attempt == 2
    run.tick({"a", "b"})
    clock.t = 30
    run.tick({"a", "b"})
    assert run.state.stage == Stage.FAILED and "out of retries" in run.state.message
    assert any(e["kind"] == "retry" for e in store.events(job_id))


def test_non_finite_update_is_dropped(env):
    run = _run(env, min_agents=1)
    run.on_accept("a", "a")
    run.on_accept("b", "b")
    run.tick({"a", "b"})
    _update(run, "a", scale=float("nan"))
    assert "a" not in run.state.participants
    out = _update(run, "b")
    assert run.state.stage == Stage.EVALUATE and [fp for fp, _ in out] == ["b"]


def test_resume_from_last_committed_round(env):
    store, job_id, clock, tmp = env
    run = _run(env)
    for fp in ("a", "b"):
        run.on_accept(fp, fp)
    run.tick({"a", "b"})
    _update(run, "a")
    _update(run, "b")
    _metrics(run, "a", 0.8)
    _metrics(run, "b", 0.8)
    after_round_1 = {k: v.copy() for k, v in run.global_arrays.items()}
    # the daemon dies here (round 2 never started); a new one resumes
    again = JobRun(job_id=job_id, spec=_spec(), store=store, checkpoint_dir=tmp, clock=clock)
    again.start()
    assert again.state.round == 2 and again.state.stage == Stage.WAITING
    for k in after_round_1:
        np.testing.assert_array_equal(again.global_arrays[k], after_round_1[k])


def _dp_update(run, fp, eps, delta=1e-5):
    tensors = {k: v.astype(np.float32) for k, v in run.global_arrays.items()}
    return run.on_update(fp, Envelope(type=MessageType.UPDATE, job=run.job_id, round=run.state.round,
                                      body={"num_samples": 10, "train_loss": 0.5, "epsilon": eps, "delta": delta},
                                      tensors=tensors))


def test_epsilon_per_round_is_recorded_and_a_budget_refusal_closes_the_round_early(env):
    store, job_id, clock, _ = env
    run = _run(env)
    for fp in ("a", "b", "c"):
        run.on_accept(fp, fp.upper())
    run.tick({"a", "b", "c"})
    _dp_update(run, "a", 1.5)
    _dp_update(run, "b", 1.2)
    _dp_update(run, "c", 1.9)
    for fp in ("a", "b", "c"):
        _metrics(run, fp, 0.8)
    row = store.rounds(job_id)[0]
    assert row.epsilon == pytest.approx(1.9) and row.delta == pytest.approx(1e-5)
    assert row.epsilons == {"A": 1.5, "B": 1.2, "C": 1.9}
    # round 2: c's budget is spent; once a and b have answered the round closes at once, not at the deadline
    run.tick({"a", "b", "c"})
    _dp_update(run, "a", 2.5)
    _dp_update(run, "b", 2.0)
    out = run.on_refuse("c", "privacy budget: round 2 would bring its epsilon to 3.1", name="C")
    assert run.state.stage == Stage.EVALUATE and sorted(fp for fp, _ in out) == ["a", "b"]
    assert clock.t == 0
    for fp in ("a", "b"):
        _metrics(run, fp, 0.8)
    row = store.rounds(job_id)[1]
    assert row.agents == 2 and row.epsilon == pytest.approx(2.5) and row.epsilons == {"A": 2.5, "B": 2.0}
    events = [e for e in store.events(job_id, limit=50) if e["kind"] == "refused"]
    assert events and "C (c)" in events[-1]["detail"] and "privacy budget" in events[-1]["detail"]


def test_rounds_without_dp_have_no_epsilon(env):
    store, job_id, _, _ = env
    run = _run(env, rounds=1)
    for fp in ("a", "b"):
        run.on_accept(fp, fp)
    run.tick({"a", "b"})
    _update(run, "a")
    _update(run, "b")
    for fp in ("a", "b"):
        _metrics(run, fp, 0.7)
    row = store.rounds(job_id)[0]
    assert row.epsilon is None and row.delta is None and row.epsilons == {}
