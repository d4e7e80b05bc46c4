"""Local training: a 3-hospital FedAvg simulation on the synthetic data reaches AUC >= 0.85."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from agent.trainer import evaluate, train_local
from medfl.aggregation import aggregate
from medfl.data.synthetic import generate, hospital_shifts
from medfl.models import create_model
from medfl.models.weights import load_state_arrays, state_arrays


def _site(n, seed, shift):
    x, y = generate(n, seed=seed, image_size=64, shift=shift)
    return TensorDataset(torch.from_numpy(x), torch.from_numpy(y))


@pytest.mark.slow
def test_fedavg_simulation_reaches_auc():
    torch.set_num_threads(2)
    shifts = hospital_shifts(3, seed=11)
    sites = [(_site(300, 1100 + i, s), _site(100, 1200 + i, s)) for i, s in enumerate(shifts)]
    torch.manual_seed(11)
    global_arrays = state_arrays(create_model("cnn"))
    aucs = []
    started = time.monotonic()
    for rnd in range(1, 6):
        updates = []
        for train, _ in sites:
            model = create_model("cnn")
            load_state_arrays(model, global_arrays)
            res = train_local(model, train, epochs=2, batch_size=32, lr=1e-3, optimizer="adam", seed=rnd)
            updates.append((state_arrays(model), res.num_samples))
        global_arrays = aggregate("fedavg", global_arrays, updates)
        model = create_model("cnn")
        load_state_arrays(model, global_arrays)
        metrics = [evaluate(model, val) for _, val in sites]
        aucs.append(sum(m["auc"] * m["n"] for m in metrics) / sum(m["n"] for m in metrics))
    print(f"AUC per round {np.round(aucs, 3).tolist()} in {time.monotonic() - started:.1f} s")
    assert aucs[-1] >= 0.85
    assert aucs[-1] > aucs[0]  # the task is not solved in one round


def test_fedprox_term_pulls_towards_the_global_model():
    shift = hospital_shifts(1, seed=2)[0]
    data = _site(64, 5, shift)
    start = create_model("cnn")
    anchor = state_arrays(start)
    drift = {}
    for mu in (0.0, 10.0):
        model = create_model("cnn")
        load_state_arrays(model, anchor)
        train_local(model, data, epochs=2, batch_size=16, lr=0.05, fedprox_mu=mu, global_arrays=anchor, seed=1)
        drift[mu] = sum(float(np.sum((v - anchor[k]) ** 2)) for k, v in state_arrays(model).items())
    assert drift[10.0] < drift[0.0]


def test_training_is_deterministic_by_seed_and_reports():
    data = _site(40, 6, None)
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        model = create_model("cnn")
        calls = []
        res = train_local(model, data, epochs=1, batch_size=16, lr=0.01, seed=3,
                          progress=lambda d, t, calls=calls: calls.append(d))
        results.append(state_arrays(model))
        assert res.num_samples == 40 and np.isfinite(res.mean_loss) and calls == [1, 2, 3]
    for k in results[0]:
        np.testing.assert_array_equal(results[0][k], results[1][k])
    metrics = evaluate(model, data)
    assert set(metrics) == {"n", "auc", "accuracy", "loss"} and metrics["n"] == 40


def test_errors():
    model = create_model("cnn")
    empty = TensorDataset(torch.zeros(0, 1, 32, 32), torch.zeros(0, dtype=torch.int64))
    with pytest.raises(ValueError, match="empty"):
        train_local(model, empty, epochs=1, batch_size=4, lr=0.1)
    data = _site(8, 1, None)
    with pytest.raises(ValueError, match="global_arrays"):
        train_local(model, data, epochs=1, batch_size=4, lr=0.1, fedprox_mu=0.1)
    with pytest.raises(ValueError, match="optimizer"):
        train_local(model, data, epochs=1, batch_size=4, lr=0.1, optimizer="lbfgs")
