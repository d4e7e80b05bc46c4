"""Secure rounds of the job state machine with in-memory agents (real SecAgg, no network).

The coordinator's :class:`JobRun` and each agent's :class:`SecureRound` exchange the same
envelopes the daemons send; the tests check the aggregate against plain FedAvg, dropouts at
each stage, the abort-and-retry path, and what the coordinator ever receives.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.config import PolicySection
from agent.secure import SecureRound
from coordinator.aggregation import aggregate
from coordinator.rounds import JobRun, Stage
from coordinator.store import Store
from medfl.errors import OutOfOrder, PolicyViolation, Rejected
from medfl.jobspec import job_from_dict
from medfl.secagg.envelopes import SECAGG_TO_AGENT
from medfl.secagg.vector import pack_fit, pack_metrics
from medfl.wire import Envelope, MessageType


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def env(tmp_path):
    store = Store(":memory:")
    row = store.submit_job({"job": {"name": "t"}})
    yield store, row.id, Clock(), tmp_path
    store.close()


def _run(env, *, agg=None, **job):
    store, job_id, clock, tmp = env
    base = {"name": "t", "model": "cnn", "rounds": 1, "min_agents": 2, "round_deadline_s": 10.0,
            "max_round_retries": 1, "image_size": 32}
    base.update(job)
    spec = job_from_dict({"job": base, "aggregation": {"frac_bits": 32, "sample_cap": 100, **(agg or {})}})
    run = JobRun(job_id=job_id, spec=spec, store=store, checkpoint_dir=tmp, eval_deadline_s=5, clock=clock)
    run.start()
    return run


class Net:
    """In-memory delivery between the JobRun and the agents' SecureRounds; records what the coordinator got."""

    def __init__(self, run: JobRun, agents: list[str]) -> None:
        self.run = run
        self.agents = agents
        self.secure: dict[str, SecureRound] = {}
        self.dead: set[str] = set()
        self.seen: list[tuple[str, Envelope]] = []
        self.evaluate: dict[str, Envelope] = {}
        self.train: dict[str, Envelope] = {}
        self.last: dict[str, Envelope] = {}  # the last secagg message each agent got

    def to_coordinator(self, fp: str, envs: list[Envelope]) -> None:
        for e in envs:
            if fp in self.dead:
                continue
            self.seen.append((fp, e))
            self.deliver(self.run.on_secagg(fp, e))

    def deliver(self, out) -> None:
        for fp, e in out:
            if fp in self.dead:
                continue
            if e.type in (MessageType.TRAIN, MessageType.EVALUATE):
                (self.train if e.type == MessageType.TRAIN else self.evaluate)[fp] = e
                self.secure[fp] = SecureRound(job=str(e.job), round=int(e.round or 0), params=e.body["secure"],
                                              policy=PolicySection(min_parties=2))
                self.to_coordinator(fp, [self.secure[fp].start()])
            elif e.type in SECAGG_TO_AGENT:
                self.last[fp] = e
                self.to_coordinator(fp, self.secure[fp].on_message(e))

    def result(self, fp: str, vector: np.ndarray) -> None:
        self.to_coordinator(fp, self.secure[fp].set_vector(vector))


def _trained(global_arrays, seed):
    rng = np.random.default_rng(seed)  # test data only
    return {k: (v + 0.01 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in global_arrays.items()}


SAMPLES = {"a": 10, "b": 30, "c": 20}
LOSS = {"a": 0.5, "b": 0.7, "c": 0.9}
METRICS = {"a": (16, 0.8, 0.7, 0.5), "b": (32, 0.9, 0.8, 0.4), "c": (48, 0.6, 0.6, 0.6)}


def _start(run, agents):
    for fp in agents:
        run.on_accept(fp, fp.upper())
    net = Net(run, agents)
    net.deliver(run.tick(set(agents)))
    return net


def _fit(net, run, fp, trained):
    agg = run.spec.aggregation
    vec, _ = pack_fit(run.global_arrays, trained[fp], num_samples=SAMPLES[fp], train_loss=LOSS[fp],
                      clip_norm=agg.clip_norm, sample_cap=agg.sample_cap)
    net.result(fp, vec)


def _evaluate(net, run, fp):
    n, auc, acc, loss = METRICS[fp]
    agg = run.spec.aggregation
    net.result(fp, pack_metrics({"n": n, "auc": auc, "accuracy": acc, "loss": loss}, clip_norm=agg.clip_norm,
                                sample_cap=agg.sample_cap))


def test_secure_round_equals_plain_fedavg_within_quantization(env):
    store, job_id, clock, _ = env
    run = _run(env)
    agents = ["a", "b", "c"]
    net = _start(run, agents)
    assert run.state.stage == Stage.FIT and sorted(net.train) == agents
    assert all("secure" in e.body and e.body["secure"]["agent_id"] == fp for fp, e in net.train.items())
    assert "secagg fit:collect" in run.describe()  # keys advertised and shared before training finished
    g = {k: v.copy() for k, v in run.global_arrays.items()}
    trained = {fp: _trained(g, i) for i, fp in enumerate(agents)}
    for fp in agents:
        _fit(net, run, fp, trained)
    assert run.state.stage == Stage.EVALUATE and sorted(net.evaluate) == agents
    candidate = net.evaluate["a"].tensors
    plain = aggregate("fedavg", g, [(trained[fp], SAMPLES[fp]) for fp in agents])
    tol = 3 * 2.0**-32 / (sum(SAMPLES.values()) / 100) + 1e-6  # n stochastic roundings / total weight + float32
    for k in plain:
        np.testing.assert_allclose(candidate[k], plain[k], rtol=0, atol=tol)
    for fp in agents:
        _evaluate(net, run, fp)
    assert run.state.stage == Stage.DONE
    row = store.rounds(job_id)[0]
    assert row.agents == 3 and row.agent_names == ("A", "B", "C") and row.num_samples == 60
    assert row.train_loss == pytest.approx(sum(SAMPLES[a] * LOSS[a] for a in agents) / 60, abs=1e-6)
    n_val = sum(m[0] for m in METRICS.values())
    assert row.val_samples == n_val
    assert row.val_auc == pytest.approx(sum(m[0] * m[1] for m in METRICS.values()) / n_val, abs=1e-6)
    assert row.val_loss == pytest.approx(sum(m[0] * m[3] for m in METRICS.values()) / n_val, abs=1e-6)
    # the coordinator never received weights or metrics in the clear: only keys, sealed shares, masked vectors
    kinds = {e.type for _, e in net.seen}
    assert kinds == {MessageType.SECAGG_KEYS, MessageType.SECAGG_SHARES, MessageType.MASKED_INPUT,
                     MessageType.SECAGG_UNMASK}
    masked = [e.tensors["masked"] for _, e in net.seen if e.type == MessageType.MASKED_INPUT]
    assert all(m.dtype == np.uint64 for m in masked)
    # a masked fit upload looks uniform: its top bits are balanced (a plain encoding would be mostly 0 or all 1)
    top = (masked[0] >> np.uint64(63)).astype(np.float64)
    assert abs(top.mean() - 0.5) < 5 / math.sqrt(top.size)


def test_agents_build_fit_masks_while_training_and_refuse_a_second_delivery(env):
    run = _run(env)
    agents = ["a", "b", "c"]
    net = _start(run, agents)
    # the key exchange finished before any result: every agent builds its fit masks now (CNN: 138k elements)
    assert all(net.secure[fp].masks_ahead and net.last[fp].type == MessageType.SECAGG_DELIVERY for fp in agents)
    with pytest.raises(OutOfOrder, match="second share delivery"):
        net.secure["a"].on_message(net.last["a"])
    g = {k: v.copy() for k, v in run.global_arrays.items()}
    trained = {fp: _trained(g, i) for i, fp in enumerate(agents)}
    for fp in agents:
        _fit(net, run, fp, trained)
    assert run.state.stage == Stage.EVALUATE
    candidate = net.evaluate["a"].tensors
    plain = aggregate("fedavg", g, [(trained[fp], SAMPLES[fp]) for fp in agents])
    tol = 3 * 2.0**-32 / (sum(SAMPLES.values()) / 100) + 1e-6
    for k in plain:
        np.testing.assert_allclose(candidate[k], plain[k], rtol=0, atol=tol)
    # metrics vectors are short: masked in one pass when the result is there
    assert not any(net.secure[fp].masks_ahead for fp in agents)


def test_agent_dropping_after_sharing_keys_is_recovered(env):
    store, job_id, clock, _ = env
    run = _run(env)
    agents = ["a", "b", "c"]
    net = _start(run, agents)
    g = {k: v.copy() for k, v in run.global_arrays.items()}
    trained = {fp: _trained(g, i) for i, fp in enumerate(agents)}
    net.dead.add("c")  # shared its keys, then died while training
    _fit(net, run, "a", trained)
    _fit(net, run, "b", trained)
    assert run.state.stage == Stage.FIT
    net.deliver(run.on_offline("c"))  # the coordinator stops waiting for it
    assert run.state.stage == Stage.EVALUATE
    plain = aggregate("fedavg", g, [(trained[fp], SAMPLES[fp]) for fp in ("a", "b")])
    for k in plain:
        np.testing.assert_allclose(net.evaluate["a"].tensors[k], plain[k], rtol=0, atol=1e-6)
    _evaluate(net, run, "a")
    _evaluate(net, run, "b")
    row = store.rounds(job_id)[0]
    assert row.agent_names == ("A", "B") and row.num_samples == 40


def test_below_threshold_aborts_and_retries(env):
    store, job_id, clock, _ = env
    run = _run(env, agg={"threshold": 3}, min_agents=3)
    agents = ["a", "b", "c"]
    net = _start(run, agents)
    g = {k: v.copy() for k, v in run.global_arrays.items()}
    trained = {fp: _trained(g, i) for i, fp in enumerate(agents)}
    net.dead.add("c")
    _fit(net, run, "a", trained)
    _fit(net, run, "b", trained)
    clock.t = 10.5  # the masked-input stage's deadline passes with 2 < t = 3 uploads
    net.deliver(run.tick(set(agents)))
    assert run.state.stage == Stage.WAITING and run.state.attempt == 2
    assert any(e["kind"] == "retry" and "threshold" in e["detail"] for e in store.events(job_id))
    # attempt 2 with all three: fresh keys, the round completes
    net.dead.clear()
    net.train.clear()
    net.deliver(run.tick(set(agents)))
    assert sorted(net.train) == agents and net.train["a"].body["secure"]["attempt"] == 2
    for fp in agents:
        _fit(net, run, fp, trained)
    for fp in agents:
        _evaluate(net, run, fp)
    assert run.state.stage == Stage.DONE and store.rounds(job_id)[0].attempts == 2


def test_plain_messages_and_stale_sessions_are_rejected(env):
    run = _run(env)
    net = _start(run, ["a", "b"])
    upd = Envelope(type=MessageType.UPDATE, job=run.job_id, round=1, body={"num_samples": 1},
                   tensors=dict(run.global_arrays))
    with pytest.raises(Rejected, match="secure aggregation"):
        run.on_update("a", upd)
    from medfl.secagg.envelopes import encode
    from medfl.secagg.keys import KeyPair
    from medfl.secagg.messages import AdvertiseKeys

    kp = KeyPair.generate()
    stale = encode(AdvertiseKeys(agent="a", c_public=kp.public, s_public=kp.public), net.secure["a"].session)
    with pytest.raises(OutOfOrder):
        run.on_secagg("a", stale)
    other = Envelope(type=stale.type, job=run.job_id, round=1, body={**stale.body, "attempt": 9})
    with pytest.raises(OutOfOrder, match="attempt"):
        run.on_secagg("a", other)


def test_agent_refuses_a_threshold_below_its_min_parties(env):
    run = _run(env, agg={"threshold": 2}, min_agents=3)
    for fp in ("a", "b", "c"):
        run.on_accept(fp, fp)
    out = run.tick({"a", "b", "c"})
    e = out[0][1]
    with pytest.raises(PolicyViolation, match="min_parties=3"):
        SecureRound(job=str(e.job), round=1, params=e.body["secure"], policy=PolicySection(min_parties=3))
