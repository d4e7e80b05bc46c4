"""Server optimizers (FedAvgM, FedAdam, FedYogi, FedAdagrad) against an independent NumPy reference.

The reference below is Algorithm 2 of Reddi et al. (ICLR 2021) and FedAvgM (Hsu et al. 2019)
written out on flat vectors, one line per line of the paper, without looking at the
implementation: m_{-1} = 0, v_{-1} = tau^2, x_{t+1} = x_t + eta * m_t / (sqrt(v_t) + tau).
"""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.rounds import JobRun, Stage
from coordinator.server_optim import OPTIMIZERS, ServerOptimizer, state_path
from coordinator.store import Store
from medfl.errors import ConfigError, NonFiniteError, StateError
from medfl.jobspec import job_from_dict
from medfl.wire import Envelope, MessageType


def reference(name, x0, deltas, *, eta, beta1=0.9, beta2=0.99, tau=1e-3, momentum=0.9):
    """The paper's update over a list of mean deltas; returns every iterate and the final moments."""
    x = x0.astype(np.float64).copy()
    m = np.zeros_like(x)
    v = np.full_like(x, tau * tau)
    xs = []
    for d in deltas:
        d = d.astype(np.float64)
        if name == "fedavgm":
            m = momentum * m + d
            x = x + eta * m
        else:
            m = beta1 * m + (1 - beta1) * d
            if name == "fedadagrad":
                v = v + d ** 2
            elif name == "fedyogi":
                v = v - (1 - beta2) * d ** 2 * np.sign(v - d ** 2)
            elif name == "fedadam":
                v = beta2 * v + (1 - beta2) * d ** 2
            x = x + eta * m / (np.sqrt(v) + tau)
        xs.append(x.copy())
    return xs, m, v


def _model(rng):
    return {"conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
            "fc.bias": rng.standard_normal(5).astype(np.float32)}


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("hyper", [dict(eta=0.05), dict(eta=0.3, beta1=0.5, beta2=0.9, tau=1e-2, momentum=0.5),
                                   dict(eta=1.0, beta1=0.0, beta2=0.0, tau=1e-6, momentum=0.0)])
def test_matches_the_paper_over_rounds(name, hyper):
    rng = np.random.default_rng(len(name) * 7 + int(hyper["eta"] * 100))
    x0 = _model(rng)
    # pseudo-gradients of changing scale, some coordinates 0 in some rounds (Yogi's sign flips)
    deltas = []
    for t in range(8):
        d = {k: (rng.standard_normal(a.shape) * 10.0 ** rng.uniform(-3, 1)).astype(np.float32) for k, a in x0.items()}
        if t % 3 == 2:
            d["fc.bias"][:2] = 0
        deltas.append(d)
    opt = ServerOptimizer(name, server_lr=hyper["eta"], beta1=hyper.get("beta1", 0.9),
                          beta2=hyper.get("beta2", 0.99), tau=hyper.get("tau", 1e-3),
                          momentum=hyper.get("momentum", 0.9))
    x = x0
    for t, d in enumerate(deltas):
        x, st = opt.propose(x, d)
        opt.commit(st)
        for k in x0:
            xs, m, v = reference(name, x0[k], [dd[k] for dd in deltas[: t + 1]], **hyper)
            assert x[k].dtype == np.float32
            # the implementation rounds x to float32 each round (the model's dtype); the reference does not
            np.testing.assert_allclose(x[k], xs[-1], rtol=2e-5, atol=2e-5 * max(1.0, float(np.abs(xs[-1]).max())))
    for k in x0:
        _, m, v = reference(name, x0[k], [dd[k] for dd in deltas], **hyper)
        np.testing.assert_allclose(opt.state.m[k], m, rtol=1e-9, atol=1e-12)
        if name != "fedavgm":
            np.testing.assert_allclose(opt.state.v[k], v, rtol=1e-9, atol=1e-15)
    assert opt.state.steps == len(deltas)


def test_propose_does_not_change_the_optimizer_until_commit():
    rng = np.random.default_rng(1)
    x0 = _model(rng)
    d = {k: np.ones_like(a) for k, a in x0.items()}
    opt = ServerOptimizer("fedadam", server_lr=0.1)
    a, st1 = opt.propose(x0, d)
    b, _ = opt.propose(x0, d)  # the same proposal again: a redone round
    assert opt.state.steps == 0 and opt.state.m == {}
    for k in x0:
        np.testing.assert_array_equal(a[k], b[k])
    opt.commit(st1)
    c, _ = opt.propose(x0, d)
    assert not np.array_equal(c["fc.bias"], a["fc.bias"])  # the momentum now counts


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_zero_updates_leave_the_model_where_it_is(name):
    rng = np.random.default_rng(2)
    x0 = _model(rng)
    opt = ServerOptimizer(name, server_lr=0.5, tau=1e-9)
    x = x0
    for _ in range(3):
        x, st = opt.propose(x, {k: np.zeros_like(a) for k, a in x0.items()})
        opt.commit(st)
    for k in x0:
        np.testing.assert_array_equal(x[k], x0[k])
        assert np.all(np.isfinite(opt.state.m[k]))


def test_tau_sets_the_first_step_and_bounds_it():
    x0 = {"w": np.zeros(3, np.float32)}
    d = {"w": np.array([0.0, 1e-4, 1.0], np.float32)}
    for tau in (1e-9, 1e-3, 1.0):
        opt = ServerOptimizer("fedadam", server_lr=1.0, beta1=0.9, beta2=0.99, tau=tau)
        x, st = opt.propose(x0, d)
        dd = d["w"].astype(np.float64)
        v = 0.99 * tau**2 + 0.01 * dd**2
        np.testing.assert_allclose(st.v["w"], v, rtol=1e-12)
        np.testing.assert_allclose(x["w"], 0.1 * dd / (np.sqrt(v) + tau), rtol=1e-6)
        # no coordinate moves by more than (1 - beta1) / sqrt(1 - beta2) = 1 times server_lr
        assert np.all(np.abs(x["w"]) <= 1.0 + 1e-6)
    for bad in (0.0, -1e-3, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="tau must be finite and > 0"):
            ServerOptimizer("fedadam", server_lr=0.1, tau=bad)


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_huge_updates_give_finite_weights(name):
    x0 = {"w": np.zeros(4, np.float32)}
    opt = ServerOptimizer(name, server_lr=0.1)
    huge = np.finfo(np.float32).max
    x = x0
    for sign in (1, -1, 1):
        x, st = opt.propose(x, {"w": np.full(4, sign * huge, np.float32)})
        opt.commit(st)
        assert np.all(np.isfinite(x["w"])) and np.all(np.abs(x["w"]) < 1.0)
        assert all(np.all(np.isfinite(a)) for a in (*st.m.values(), *st.v.values()))


def test_nan_and_out_of_range_are_refused_and_leave_the_state():
    x0 = {"w": np.zeros(3, np.float32)}
    opt = ServerOptimizer("fedyogi", server_lr=0.1)
    _, st = opt.propose(x0, {"w": np.ones(3, np.float32)})
    opt.commit(st)
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(NonFiniteError, match="not finite in \\['w'\\]"):
            opt.propose(x0, {"w": np.array([0, bad, 0], np.float32)})
    assert opt.state is st
    mom = ServerOptimizer("fedavgm", server_lr=1.0, momentum=0.9)
    big = {"w": np.full(3, np.finfo(np.float32).max, np.float32)}
    with pytest.raises(NonFiniteError, match="float32's range"):
        mom.propose(big, big)
    assert mom.state.steps == 0
    with pytest.raises(ValueError, match="do not match the global model"):
        opt.propose(x0, {"w": np.ones(4, np.float32)})
    with pytest.raises(ValueError, match="do not match the global model"):
        opt.propose(x0, {"nope": np.ones(3, np.float32)})


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="not a stateful server optimizer"):
        ServerOptimizer("fedavg", server_lr=1.0)
    for kw, msg in ((dict(server_lr=0.0), "server_lr"), (dict(server_lr=0.1, beta1=1.0), "beta1"),
                    (dict(server_lr=0.1, beta2=-0.1), "beta2"), (dict(server_lr=0.1, momentum=1.0), "momentum"),
                    (dict(server_lr=float("nan")), "server_lr")):
        with pytest.raises(ValueError, match=msg):
            ServerOptimizer("fedadam", **kw)


def _job(aggregation):
    return job_from_dict({"job": {"name": "t", "model": "cnn", "rounds": 3, "min_agents": 2, "image_size": 32},
                          "aggregation": aggregation})


def test_job_file_hyperparameters_are_checked():
    spec = _job({"strategy": "fedyogi", "server_lr": 0.05, "beta1": 0.8, "beta2": 0.95, "tau": 1e-4})
    opt = ServerOptimizer.from_spec(spec.aggregation)
    assert opt is not None and (opt.strategy, opt.server_lr, opt.beta1, opt.beta2, opt.tau) == \
        ("fedyogi", 0.05, 0.8, 0.95, 1e-4)
    assert ServerOptimizer.from_spec(_job({"strategy": "fedprox"}).aggregation) is None
    assert spec.prox_mu == 0.0
    cases = [({"strategy": "fedadam", "server_lr": 0.1, "beta1": 1.0}, "aggregation.beta1: must be in [0, 1)"),
             ({"strategy": "fedadam", "server_lr": 0.1, "beta2": -0.5}, "aggregation.beta2: must be in [0, 1)"),
             ({"strategy": "fedadam", "server_lr": 0.1, "tau": 0.0}, "aggregation.tau: must be a finite number > 0"),
             ({"strategy": "fedavgm", "server_momentum": 1.5}, "aggregation.server_momentum: must be in [0, 1)"),
             ({"strategy": "fedadam", "server_lr": float("nan")}, "aggregation.server_lr: must be a finite"),
             ({"strategy": "fedadam", "server_lr": 3.0}, "use at most 1 (typical: 0.01-0.1)"),
             ({"strategy": "fedadamm"}, "did you mean 'fedadam'")]
    for agg, msg in cases:
        with pytest.raises(ConfigError) as info:
            _job(agg)
        assert msg in str(info.value), str(info.value)


def test_state_file_round_trip_and_refusals(tmp_path):
    rng = np.random.default_rng(3)
    x0 = _model(rng)
    opt = ServerOptimizer("fedadagrad", server_lr=0.1)
    _, st = opt.propose(x0, {k: rng.standard_normal(a.shape).astype(np.float32) for k, a in x0.items()})
    path = state_path(tmp_path / "job" / "round-0001.safetensors")
    assert path.name == "server-opt-round-0001.safetensors"
    # the newest-model globs (the model server's default checkpoint, the agents' scorer) must not pick it
    assert not path.match("*/round-*.safetensors")
    opt.save(path, st, job_id="j1", rnd=1)
    assert b"pickle" not in path.read_bytes()[:64]
    again = ServerOptimizer("fedadagrad", server_lr=0.1)
    again.load(path, job_id="j1", rnd=1)
    assert again.state.steps == 1
    for k in x0:
        np.testing.assert_array_equal(again.state.m[k], st.m[k])
        np.testing.assert_array_equal(again.state.v[k], st.v[k])
    with pytest.raises(StateError, match="does not belong to job j2"):
        again.load(path, job_id="j2", rnd=1)
    with pytest.raises(StateError, match="strategy fedadam"):
        ServerOptimizer("fedadam", server_lr=0.1).load(path, job_id="j1", rnd=1)
    with pytest.raises(StateError, match="is missing"):
        again.load(tmp_path / "nope.safetensors", job_id="j1", rnd=1)


# ---- through the round machine: a restarted coordinator continues with the same state -----------------
def _spec(strategy="fedadam", rounds=3):
    return job_from_dict({"job": {"name": "t", "model": "cnn", "rounds": rounds, "min_agents": 2, "image_size": 32,
                                  "round_deadline_s": 10.0},
                          "aggregation": {"secure": False, "strategy": strategy, "server_lr": 0.05}})


def _play_round(run, rnd):
    for fp in ("a", "b"):
        run.on_accept(fp, fp.upper())
    run.tick({"a", "b"})
    assert run.state.stage == Stage.FIT and run.state.round == rnd
    for i, fp in enumerate(("a", "b")):
        rng = np.random.default_rng(100 * rnd + i)  # each agent's "training" is a fixed random move
        # sorted: a resumed run holds its arrays in the checkpoint's (sorted) order
        tensors = {k: (v + rng.standard_normal(v.shape).astype(np.float32) * 0.01).astype(np.float32)
                   for k, v in sorted(run.global_arrays.items())}
        run.on_update(fp, Envelope(type=MessageType.UPDATE, job=run.job_id, round=rnd,
                                   body={"num_samples": 10 + 20 * i, "train_loss": 0.5}, tensors=tensors))
    assert run.state.stage == Stage.EVALUATE
    for fp in ("a", "b"):
        run.on_metrics(fp, Envelope(type=MessageType.METRICS, job=run.job_id, round=rnd,
                                    body={"n": 10, "auc": 0.7, "accuracy": 0.6, "loss": 0.6}))


@pytest.mark.parametrize("strategy", ["fedadam", "fedavgm"])
def test_resumed_job_continues_with_the_same_optimizer_state(tmp_path, strategy):
    from medfl.models.weights import load_checkpoint

    finals = []
    for restart_after in (None, 1):
        store = Store(":memory:")
        job_id = store.submit_job({"job": {"name": "t"}}).id
        root = tmp_path / f"restart-{restart_after}"
        run = JobRun(job_id=job_id, spec=_spec(strategy), store=store, checkpoint_dir=root, clock=lambda: 0.0)
        run.start()
        for rnd in (1, 2, 3):
            if rnd - 1 == restart_after:
                # a round in flight when the coordinator stops: proposed, never committed
                run.on_accept("a", "A")
                run.on_accept("b", "B")
                run.tick({"a", "b"})
                run = JobRun(job_id=job_id, spec=_spec(strategy), store=store, checkpoint_dir=root,
                             clock=lambda: 0.0)
                run.start()
                assert run.state.round == rnd and run.server_opt is not None and run.server_opt.state.steps == rnd - 1
            _play_round(run, rnd)
        assert run.finished and run.state.stage == Stage.DONE
        assert state_path(store.rounds(job_id)[-1].checkpoint).exists()
        finals.append(load_checkpoint(store.rounds(job_id)[-1].checkpoint)[0])
        store.close()
    for k in finals[0]:
        np.testing.assert_array_equal(finals[0][k], finals[1][k])


def test_resume_without_the_state_file_refuses(tmp_path):
    store = Store(":memory:")
    job_id = store.submit_job({"job": {"name": "t"}}).id
    run = JobRun(job_id=job_id, spec=_spec(), store=store, checkpoint_dir=tmp_path, clock=lambda: 0.0)
    run.start()
    _play_round(run, 1)
    state_path(store.rounds(job_id)[-1].checkpoint).unlink()
    again = JobRun(job_id=job_id, spec=_spec(), store=store, checkpoint_dir=tmp_path, clock=lambda: 0.0)
    with pytest.raises(StateError, match="needs its server optimizer state of round 1"):
        again.start()
    store.close()
