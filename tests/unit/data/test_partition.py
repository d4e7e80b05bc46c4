"""Partitions across virtual hospitals and per-round faults (issue 23 item 2)."""

from __future__ import annotations

import numpy as np
import pytest

from medfl.data.partition import FaultPlan, label_skew, partition


def _labels(n: int = 1000, k: int = 4, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, k, n)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "quantity"])
@pytest.mark.parametrize("sites", [1, 3, 10, 37])
def test_parts_are_disjoint_cover_everything_and_repeat_by_seed(scheme, sites):
    y = _labels()
    parts = partition(y, sites, scheme=scheme, alpha=0.3, seed=7, min_per_site=2)
    assert len(parts) == sites
    joined = np.concatenate(parts)
    assert np.array_equal(np.sort(joined), np.arange(y.size))  # disjoint and complete
    assert all(p.size >= 2 for p in parts)
    again = partition(y, sites, scheme=scheme, alpha=0.3, seed=7, min_per_site=2)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition(y, sites, scheme=scheme, alpha=0.3, seed=8, min_per_site=2)
    if sites > 1:
        assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_dirichlet_alpha_controls_label_skew_and_quantity_keeps_labels_iid():
    y = _labels(4000)
    skew = {a: label_skew(y, partition(y, 10, scheme="dirichlet", alpha=a, seed=3)) for a in (0.05, 0.5, 100.0)}
    assert skew[0.05] > skew[0.5] > skew[100.0] and skew[0.05] > 0.5 and skew[100.0] < 0.08
    iid = partition(y, 10, scheme="iid", seed=3)
    assert label_skew(y, iid) < 0.08 and max(p.size for p in iid) - min(p.size for p in iid) <= 1
    q = partition(y, 10, scheme="quantity", alpha=0.3, seed=3)
    sizes = sorted(p.size for p in q)
    assert sizes[-1] > 4 * sizes[0]  # very unequal sites
    assert label_skew(y, [p for p in q if p.size >= 100]) < 0.1  # with IID labels


def test_bad_arguments_are_refused():
    y = _labels(20)
    with pytest.raises(ValueError, match="scheme must be one of"):
        partition(y, 2, scheme="pathological")
    with pytest.raises(ValueError, match="need 30 records"):
        partition(y, 3, min_per_site=10)
    with pytest.raises(ValueError, match="alpha must be"):
        partition(y, 2, scheme="dirichlet", alpha=float("nan"))
    with pytest.raises(ValueError, match="n_sites must be"):
        partition(y, 0)
    with pytest.raises(ValueError, match="1-D"):
        partition(y.reshape(4, 5), 2)


def test_fault_plan_is_reproducible_by_round_and_matches_its_rates():
    plan = FaultPlan(dropout=0.2, straggler=0.3, delay_s=45.0, seed=5)
    a, la = plan.round_faults(3, 50)
    plan.round_faults(1, 50)  # another round in between changes nothing
    b, lb = plan.round_faults(3, 50)
    assert a == b and la == lb and not (a & set(la)) and set(la.values()) <= {45.0}
    drops = [len(plan.round_faults(r, 100)[0]) for r in range(1, 201)]
    late = [len(plan.round_faults(r, 100)[1]) for r in range(1, 201)]
    assert abs(np.mean(drops) - 20) < 1.5 and abs(np.mean(late) - 0.3 * 80) < 1.5
    assert FaultPlan().round_faults(1, 10) == (frozenset(), {})
    with pytest.raises(ValueError, match="probability"):
        FaultPlan(dropout=1.5)
    with pytest.raises(ValueError, match="delay_s"):
        FaultPlan(delay_s=-1)
