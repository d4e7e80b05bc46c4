"""Metrics against brute-force definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.metrics import accuracy, binary_log_loss, roc_auc


def brute_auc(y, s):
    pos = [v for v, t in zip(s, y, strict=True) if t]
    neg = [v for v, t in zip(s, y, strict=True) if not t]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5)), min_size=2, max_size=60))
def test_auc_matches_pairwise_with_ties(pairs):
    y = np.array([p[0] for p in pairs])
    s = np.array([p[1] for p in pairs], float)
    if y.all() or not y.any():
        assert math.isnan(roc_auc(y, s))
    else:
        assert roc_auc(y, s) == pytest.approx(brute_auc(y, s))


def test_auc_edges():
    assert roc_auc([0, 1], [0.1, 0.9]) == 1.0
    assert roc_auc([0, 1], [0.9, 0.1]) == 0.0
    assert roc_auc([0, 1, 0, 1], [0.5] * 4) == 0.5
    with pytest.raises(ValueError, match="differ in length"):
        roc_auc([0, 1], [0.5])


def test_accuracy_and_loss():
    assert accuracy([0, 1, 1], [0.2, 0.7, 0.4]) == pytest.approx(2 / 3)
    assert binary_log_loss([1, 0], [0.5, 0.5]) == pytest.approx(math.log(2))
    assert math.isnan(accuracy([], []))
    assert binary_log_loss([1], [1.0]) < 1e-6


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.floats(-1e6, 1e6, allow_nan=False)), min_size=2, max_size=80))
def test_auc_matches_pairwise_on_continuous_scores(pairs):
    y = np.array([p[0] for p in pairs])
    s = np.array([p[1] for p in pairs], float)
    if y.all() or not y.any():
        assert math.isnan(roc_auc(y, s))
    else:
        assert roc_auc(y, s) == pytest.approx(brute_auc(y, s))
        assert roc_auc(y, -s) == pytest.approx(1 - brute_auc(y, s))  # reversing scores mirrors the AUC


def test_auc_one_class_and_empty_are_nan():
    assert math.isnan(roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(roc_auc([0, 0], [0.1, 0.2]))
    assert math.isnan(roc_auc([], []))


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="0 or 1"):
        roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="differ in length"):
        accuracy([0, 1], [0.5])
    with pytest.raises(ValueError, match="differ in length"):
        binary_log_loss([0, 1, 1], [0.5])


def test_accuracy_threshold_and_loss_clipping():
    assert accuracy([0, 1], [0.5, 0.5]) == 0.5  # a score at the threshold is positive
    assert accuracy([0, 1], [0.3, 0.6], threshold=0.7) == 0.5
    assert math.isfinite(binary_log_loss([1, 0], [0.0, 1.0]))  # clipped, not infinite
    assert math.isnan(binary_log_loss([], []))
