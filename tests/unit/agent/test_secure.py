"""The agent's secure round from the attacker's side: a coordinator cannot change the bounds of the accepted job.

The job offer is the source of truth for ``aggregation.clip_norm`` and ``sample_cap``; TRAIN and
EVALUATE repeat them in their ``secure`` parameters (older agents need the copies). The envelopes
here are the ones the coordinator's :class:`JobRun` sends, tampered where a test says so.
"""

from __future__ import annotations

import dataclasses

import pytest

from agent.config import PolicySection
from agent.secure import open_secure
from coordinator.rounds import JobRun, Stage
from coordinator.store import Store
from medfl.errors import MalformedMessage, PolicyViolation
from medfl.jobspec import JobSpec, job_from_dict
from medfl.wire import Envelope, MessageType

AGENTS = ["a", "b", "c"]
POLICY = PolicySection(min_parties=2)


@pytest.fixture
def store():
    s = Store(":memory:")
    yield s
    s.close()


def _run(store, tmp_path, **agg) -> JobRun:
    job_id = store.submit_job({"job": {"name": "t"}}).id
    spec = job_from_dict({"job": {"name": "t", "model": "cnn", "rounds": 1, "min_agents": 2, "image_size": 32},
                          "aggregation": {"frac_bits": 32, "sample_cap": 100, **agg}})
    run = JobRun(job_id=job_id, spec=spec, store=store, checkpoint_dir=tmp_path, clock=lambda: 0.0)
    run.start()
    return run


def _accepted(run: JobRun) -> JobSpec:
    """The job as the agent parsed it from its JOB_OFFER."""
    (_, offer), = run.offer("a")
    return job_from_dict(dict(offer.body), source="JOB_OFFER")


def _train(run: JobRun) -> Envelope:
    for fp in AGENTS:
        run.on_accept(fp, fp)
    out = run.tick(set(AGENTS))
    assert run.state.stage == Stage.FIT
    return dict(out)["a"]


def _with_secure(env: Envelope, **changes) -> Envelope:
    secure = {**env.body["secure"], **changes}
    return dataclasses.replace(env, body={**env.body, "secure": secure})


def test_an_honest_round_uses_the_accepted_jobs_bounds(store, tmp_path):
    run = _run(store, tmp_path, clip_norm=2.5)
    job = _accepted(run)
    secure = open_secure(spec=job, env=_train(run), policy=POLICY)
    assert secure is not None
    assert secure.clip_norm == secure.spec.clip_norm == job.aggregation.clip_norm == 2.5
    assert secure.sample_cap == job.aggregation.sample_cap == 100


@pytest.mark.parametrize("tamper", [
    {"clip_norm": 1000.0},                       # a looser bound: one agent's update could dominate the sum
    {"clip_norm": 0.01},                         # a tighter one: the update is scaled to nothing
    {"sample_cap": 1},                           # every agent weighs the same
])
def test_a_copy_that_disagrees_with_the_job_is_refused(store, tmp_path, tamper):
    run = _run(store, tmp_path, clip_norm=2.5)
    job = _accepted(run)
    (key, value), = tamper.items()
    with pytest.raises(MalformedMessage, match=rf"secure\.{key}={value!r}.*aggregation\.{key}="):
        open_secure(spec=job, env=_with_secure(_train(run), **tamper), policy=POLICY)


def test_a_quantization_spec_with_another_clip_norm_is_refused(store, tmp_path):
    run = _run(store, tmp_path, clip_norm=2.5)
    job = _accepted(run)
    env = _train(run)
    spec = {**env.body["secure"]["spec"], "clip_norm": 1.0}
    with pytest.raises(MalformedMessage, match=r"secure\.spec\.clip_norm=1\.0.*aggregation\.clip_norm=2\.5"):
        open_secure(spec=job, env=_with_secure(env, spec=spec), policy=POLICY)


def test_a_coordinator_consistent_with_itself_but_not_with_the_offer_is_refused(store, tmp_path):
    offered = _accepted(_run(store, tmp_path / "offer", clip_norm=2.5))
    switched = _run(store, tmp_path / "train", clip_norm=50.0)  # every copy in its TRAIN says 50
    env = _train(switched)
    assert env.body["secure"]["clip_norm"] == env.body["secure"]["spec"]["clip_norm"] == 50.0
    with pytest.raises(MalformedMessage, match=r"clip_norm=50\.0.*aggregation\.clip_norm=2\.5"):
        open_secure(spec=offered, env=env, policy=POLICY)


def test_a_secure_job_sent_without_secure_parameters_is_refused(store, tmp_path):
    run = _run(store, tmp_path)
    job = _accepted(run)
    env = _train(run)
    plain = Envelope(type=MessageType.TRAIN, job=env.job, round=env.round,
                     body={k: v for k, v in env.body.items() if k != "secure"})
    with pytest.raises(PolicyViolation, match="will not send its update in the clear"):
        open_secure(spec=job, env=plain, policy=POLICY)
