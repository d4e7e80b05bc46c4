"""The local trainer: a 3-hospital FedAvg simulation on synthetic chest X-rays, FedProx, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from agent.trainer import TrainResult, evaluate, train_local
from medfl.data.synthetic import generate, hospital_shifts
from medfl.models import create_model
from medfl.models.weights import load_state_arrays, state_arrays


def _site(n, seed, shift):
    x, y = generate(n, seed=seed, image_size=64, shift=shift)
    return TensorDataset(torch.from_numpy(x), torch.from_numpy(y))


def _fedavg(updates):
    """Sample-weighted mean of state arrays (McMahan et al., AISTATS 2017)."""
    total = sum(n for _, n in updates)
    return {k: sum(a[k] * (n / total) for a, n in updates).astype(np.float32) for k in updates[0][0]}


@pytest.fixture()
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_fedavg_three_hospitals_reaches_auc(one_thread):
    """The demo's property: 3 non-IID sites, 300 train / 100 val each, 64 px, 5 rounds of 1 epoch."""
    shifts = hospital_shifts(3, seed=11)
    sites = [(_site(300, 1100 + i, s), _site(100, 1150 + i, s)) for i, s in enumerate(shifts)]
    torch.manual_seed(11)
    global_arrays = state_arrays(create_model("cnn"))
    aucs, epoch_seconds = [], []
    for rnd in range(1, 6):
        updates = []
        for train, _ in sites:
            model = create_model("cnn")
            load_state_arrays(model, global_arrays)
            res = train_local(model, train, epochs=1, batch_size=32, lr=0.01, momentum=0.9, seed=rnd)
            epoch_seconds.append(res.seconds)
            updates.append((state_arrays(model), res.num_samples))
        global_arrays = _fedavg(updates)
        model = create_model("cnn")
        load_state_arrays(model, global_arrays)
        metrics = [evaluate(model, val) for _, val in sites]
        aucs.append(sum(m["auc"] * m["n"] for m in metrics) / sum(m["n"] for m in metrics))
    print(f"AUC per round {np.round(aucs, 3).tolist()}; {np.mean(epoch_seconds):.2f} s per local epoch "
          f"(300 images, 1 thread)")
    assert aucs[-1] >= 0.85
    assert aucs[-1] - aucs[0] >= 0.05  # one round is clearly worse: the task is not trivial
    assert max(epoch_seconds) < 30  # 4 processes on 2 cores must finish 5 rounds in minutes


def test_a_local_model_beats_chance_on_its_own_site(one_thread):
    shift = hospital_shifts(3, seed=4)[1]
    train, val = _site(240, 40, shift), _site(120, 41, shift)
    torch.manual_seed(0)
    model = create_model("cnn")
    before = evaluate(model, val)["auc"]
    train_local(model, train, epochs=3, batch_size=32, lr=0.01, seed=0)
    after = evaluate(model, val)
    assert before == pytest.approx(0.5)  # zero-initialised head: every score is 0.5 at the start
    assert after["auc"] > 0.7 and 0.5 < after["accuracy"] <= 1.0


def test_fedprox_term_pulls_towards_the_global_model():
    data = _site(64, 5, hospital_shifts(1, seed=2)[0])
    torch.manual_seed(0)
    anchor = state_arrays(create_model("cnn"))
    drift = {}
    for mu in (0.0, 10.0):
        model = create_model("cnn")
        load_state_arrays(model, anchor)
        train_local(model, data, epochs=2, batch_size=16, lr=0.05, fedprox_mu=mu, global_arrays=anchor, seed=1)
        drift[mu] = sum(float(np.sum((v - anchor[k]) ** 2)) for k, v in state_arrays(model).items())
    assert 0 < drift[10.0] < drift[0.0]


def test_shuffling_follows_seed_not_the_global_rng():
    data = _site(40, 6, None)

    def run(seed, global_seed):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64 * 64, 2))  # no dropout
        torch.manual_seed(global_seed)
        calls: list[tuple[int, int]] = []
        res = train_local(model, data, epochs=2, batch_size=16, lr=0.01, seed=seed,
                          progress=lambda d, t: calls.append((d, t)))
        assert isinstance(res, TrainResult) and res.num_samples == 40 and np.isfinite(res.mean_loss)
        assert calls == [(i, 6) for i in range(1, 7)] and res.seconds > 0
        return state_arrays(model)

    a, b, c = run(3, 100), run(3, 200), run(4, 100)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert any(not np.array_equal(a[k], c[k]) for k in a)


def test_evaluate_reports_and_does_not_track_gradients():
    model = create_model("cnn")
    data = _site(30, 7, None)
    metrics = evaluate(model, data, batch_size=8)
    assert set(metrics) == {"n", "auc", "accuracy", "loss"} and metrics["n"] == 30
    assert all(p.grad is None for p in model.parameters())


def test_argument_errors():
    model = create_model("cnn")
    empty = TensorDataset(torch.zeros(0, 1, 32, 32), torch.zeros(0, dtype=torch.int64))
    with pytest.raises(ValueError, match="empty"):
        train_local(model, empty, epochs=1, batch_size=4, lr=0.1)
    data = _site(8, 1, None)
    with pytest.raises(ValueError, match="global_arrays"):
        train_local(model, data, epochs=1, batch_size=4, lr=0.1, fedprox_mu=0.1)
    with pytest.raises(ValueError, match="epochs"):
        train_local(model, data, epochs=0, batch_size=4, lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        train_local(model, data, epochs=1, batch_size=4, lr=-1.0)
    with pytest.raises(ValueError, match="optimizer"):
        train_local(model, data, epochs=1, batch_size=4, lr=0.1, optimizer="lbfgs")


@pytest.mark.parametrize("dp", [False, True])
def test_segmentation_training_lowers_the_dice_ce_loss_and_is_evaluated_with_monai(dp):
    from agent.budget import RoundPlan
    from agent.trainer import evaluate_segmentation
    from medfl.data.synthetic_seg import BRATS_LABELS, brain_volumes
    from medfl.segmentation.metrics import segmentation_metrics

    x, y = brain_volumes(12, seed=5, size=16)
    y = np.vectorize(BRATS_LABELS.get)(y)
    ds = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    torch.manual_seed(0)
    model = create_model("unet3d", width=4, depth=2)
    before = evaluate_segmentation(model, ds, num_classes=4)
    plan = (RoundPlan(sample_rate=0.5, noise_multiplier=0.3, max_grad_norm=5.0, delta=1e-5, steps=12,
                      accountant="rdp", max_physical_batch=8) if dp else None)
    res = train_local(model, ds, epochs=4, batch_size=4, lr=0.1, seed=1, dp=plan, task="segmentation")
    after = evaluate_segmentation(model, ds, num_classes=4)
    assert after["loss"] < before["loss"] - 0.05, (before, after)
    assert res.num_samples == 12 and np.isfinite(res.mean_loss)
    if dp:
        assert res.epsilon is not None and res.epsilon > 0
    ref = segmentation_metrics(model(ds.tensors[0]).argmax(1), ds.tensors[1], 4)
    assert after["dice"] == pytest.approx(ref["mean_dice"], nan_ok=True)
    assert [after[f"dice_{k}"] for k in (1, 2, 3)] == pytest.approx(ref["dice"], nan_ok=True)
    with pytest.raises(ValueError, match="task must be"):
        train_local(model, ds, epochs=1, batch_size=4, lr=0.1, task="detection")
