"""The secure-round vector layout: the sum of packed vectors unpacks to FedAvg and weighted metrics."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.aggregation import aggregate
from medfl.errors import NonFiniteError, ShareError
from medfl.secagg.vector import fit_length, pack_fit, pack_metrics, unpack_fit, unpack_metrics


def _model(seed=0):
    rng = np.random.default_rng(seed)  # test data only
    return {"b.weight": rng.standard_normal((3, 4)).astype(np.float32), "a.bias": rng.standard_normal(5).astype(
        np.float32), "steps": np.array([7], dtype=np.int64)}


def test_sum_of_packed_vectors_unpacks_to_fedavg():
    g = _model()
    rng = np.random.default_rng(1)
    agents = [({k: (v + 0.1 * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in g.items()}, n, loss)
              for n, loss in ((10, 0.5), (30, 0.7), (25, float("nan")))]
    vecs = [pack_fit(g, t, num_samples=n, train_loss=loss, clip_norm=10.0, sample_cap=100)[0] for t, n, loss in agents]
    assert all(v.dtype == np.float32 and v.shape == (fit_length(g),) for v in vecs)
    fit = unpack_fit(np.sum(vecs, axis=0), g, clip_norm=10.0, sample_cap=100)
    plain = aggregate("fedavg", {k: g[k] for k in ("a.bias", "b.weight")},
                      [({k: t[k] for k in ("a.bias", "b.weight")}, n) for t, n, _ in agents])
    assert set(fit.mean_delta) == {"a.bias", "b.weight"}  # integer buffers are not averaged
    for k, v in plain.items():
        np.testing.assert_allclose(g[k] + fit.mean_delta[k], v, atol=1e-6)
    assert fit.num_samples == 65
    assert fit.train_loss == pytest.approx((10 * 0.5 + 30 * 0.7) / 40)  # the NaN loss is left out


def test_clipping_bounds_every_coordinate_and_scales_the_delta():
    g = {"w": np.zeros(1000, np.float32)}
    t = {"w": np.full(1000, 3.0, np.float32)}  # norm ~94.9
    vec, norm = pack_fit(g, t, num_samples=50, train_loss=1.0, clip_norm=0.5, sample_cap=100)
    assert norm == pytest.approx(3.0 * np.sqrt(1000), rel=1e-5)
    assert np.linalg.norm(vec[:1000].astype(np.float64)) <= 0.5 * 0.5 * (1 + 1e-6)  # u = 0.5
    assert np.all(np.abs(vec) <= 0.5)
    fit = unpack_fit(vec, g, clip_norm=0.5, sample_cap=100)
    assert np.linalg.norm(fit.mean_delta["w"]) == pytest.approx(0.5, rel=1e-5)
    # samples above the cap weigh 1 (and cannot leave the ring's bound)
    big, _ = pack_fit(g, t, num_samples=10**6, train_loss=1.0, clip_norm=0.5, sample_cap=100)
    assert np.all(np.abs(big) <= 0.5)


def test_bad_inputs_are_refused():
    g = {"w": np.zeros(4, np.float32)}
    with pytest.raises(NonFiniteError, match="element 2"):
        pack_fit(g, {"w": np.array([0, 0, np.nan, 0], np.float32)}, num_samples=1, train_loss=0.1, clip_norm=1.0,
                 sample_cap=10)
    with pytest.raises(ValueError, match="shape"):
        pack_fit(g, {"w": np.zeros(5, np.float32)}, num_samples=1, train_loss=0.1, clip_norm=1.0, sample_cap=10)
    with pytest.raises(ValueError, match="do not match"):
        pack_fit(g, {"v": np.zeros(4, np.float32)}, num_samples=1, train_loss=0.1, clip_norm=1.0, sample_cap=10)
    zero = pack_fit(g, {"w": np.ones(4, np.float32)}, num_samples=0, train_loss=0.1, clip_norm=1.0, sample_cap=10)[0]
    with pytest.raises(ShareError, match="0 samples"):
        unpack_fit(zero, g, clip_norm=1.0, sample_cap=10)
    with pytest.raises(ShareError, match="elements"):
        unpack_fit(np.zeros(3, np.float32), g, clip_norm=1.0, sample_cap=10)
    with pytest.raises(NonFiniteError):
        unpack_fit(np.array([0, np.inf, 0, 0, 1, 0, 0], np.float32), g, clip_norm=1.0, sample_cap=10)


def test_metrics_are_weighted_by_validation_samples_and_nan_is_left_out():
    ms = [{"n": 10, "auc": 0.9, "accuracy": 0.8, "loss": 0.4}, {"n": 30, "auc": float("nan"), "accuracy": 0.6,
                                                                  "loss": 0.6}]
    total = np.sum([pack_metrics(m, clip_norm=10.0, sample_cap=100) for m in ms], axis=0)
    got = unpack_metrics(total, clip_norm=10.0, sample_cap=100)
    assert got.n == 40
    assert got.auc == pytest.approx(0.9)  # only the agent with a defined AUC
    assert got.accuracy == pytest.approx((10 * 0.8 + 30 * 0.6) / 40)
    assert got.loss == pytest.approx((10 * 0.4 + 30 * 0.6) / 40, rel=1e-5)
    none = unpack_metrics(pack_metrics({"n": 0, "auc": 0.5, "accuracy": 0.5, "loss": 1.0}, clip_norm=1.0,
                                       sample_cap=10), clip_norm=1.0, sample_cap=10)
    assert none.n == 0 and none.auc is None and none.loss is None


def test_pack_fit_into_out_matches_and_refuses_what_does_not_fit() -> None:
    rng = np.random.default_rng(11)  # test data only
    g = {"w": rng.standard_normal((5, 3)).astype(np.float32), "b": rng.standard_normal(4).astype(np.float32)}
    t = {k: v + 0.5 for k, v in g.items()}
    want, wnorm = pack_fit(g, t, num_samples=10, train_loss=0.3, clip_norm=1.0, sample_cap=100)
    out = np.full(fit_length(g), np.nan, np.float32)
    got, norm = pack_fit(g, t, num_samples=10, train_loss=0.3, clip_norm=1.0, sample_cap=100, out=out)
    assert got is out and np.array_equal(out, want) and norm == wnorm
    for bad in (np.zeros(fit_length(g), np.float64), np.zeros(fit_length(g) + 1, np.float32),
                np.zeros(2 * fit_length(g), np.float32)[::2]):
        with pytest.raises(ValueError, match="out must be"):
            pack_fit(g, t, num_samples=10, train_loss=0.3, clip_norm=1.0, sample_cap=100, out=bad)


def test_segmentation_metrics_sum_to_weighted_dice_and_skip_absent_classes():
    from medfl.secagg.vector import metric_names, metrics_length

    names = metric_names("segmentation", 4)
    assert names == ("dice", "loss", "hd95", "dice_1", "dice_2", "dice_3")
    assert metric_names() == ("auc", "accuracy", "loss")
    # site a has no enhancing tumour (dice_3 NaN): its Dice of class 3 must not dilute site b's
    a = {"n": 10, "dice": 0.6, "loss": 0.9, "hd95": 4.0, "dice_1": 0.5, "dice_2": 0.7, "dice_3": float("nan")}
    b = {"n": 30, "dice": 0.8, "loss": 0.5, "hd95": 2.0, "dice_1": 0.9, "dice_2": 0.7, "dice_3": 0.8}
    vecs = [pack_metrics(m, clip_norm=10.0, sample_cap=100, names=names) for m in (a, b)]
    assert all(v.shape == (metrics_length(names),) and np.all(np.abs(v) <= 10.0) for v in vecs)
    got = unpack_metrics(np.sum(vecs, axis=0), clip_norm=10.0, sample_cap=100, names=names)
    assert got.n == 40 and got.auc is None and got.accuracy is None
    assert got.loss == pytest.approx((10 * 0.9 + 30 * 0.5) / 40, abs=1e-6)
    assert got.extra["dice"] == pytest.approx((10 * 0.6 + 30 * 0.8) / 40, abs=1e-6)
    assert got.extra["hd95"] == pytest.approx((10 * 4.0 + 30 * 2.0) / 40, abs=1e-5)
    assert got.extra["dice_3"] == pytest.approx(0.8, abs=1e-6)
    assert got.extra["dice_1"] == pytest.approx((10 * 0.5 + 30 * 0.9) / 40, abs=1e-6)
    with pytest.raises(ShareError, match="expected 13"):
        unpack_metrics(np.zeros(7), clip_norm=10.0, sample_cap=100, names=names)
    with pytest.raises(ValueError, match="num_classes >= 2"):
        metric_names("segmentation", 1)
    with pytest.raises(ValueError, match="no secure metrics"):
        metric_names("detection")
