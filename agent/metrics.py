"""Binary classification metrics: ROC AUC (rank-based), accuracy, log loss."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["accuracy", "binary_log_loss", "roc_auc"]


def _pair(labels: np.ndarray, values: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Flat (bool labels, float64 values) after checking lengths, 0/1 labels and finite values."""
    y = np.asarray(labels).ravel()
    v = np.asarray(values, dtype=np.float64).ravel()
    if y.shape != v.shape:
        raise ValueError(f"labels and {what} differ in length: {y.shape[0]} vs {v.shape[0]}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 or 1, got values {np.unique(y)[:10].tolist()}")
    if not np.isfinite(v).all():
        raise ValueError(f"{what} hold {int((~np.isfinite(v)).sum())} NaN or infinite value(s)")
    return y.astype(bool), v


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the Mann-Whitney U statistic, ties counted half.

    Parameters
    ----------
    labels : array of {0, 1}
        True classes.
    scores : array of float
        Higher means more likely positive.

    Returns
    -------
    float
        AUC in [0, 1], or NaN when only one class is present.

    References
    ----------
    .. [1] Hanley and McNeil, "The meaning and use of the area under a ROC curve",
       Radiology 143(1), 1982.
    """
    y, s = _pair(labels, scores, "scores")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, np.float64)
    sorted_s = s[order]
    # average ranks over ties
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], s.size]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def accuracy(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction of correct decisions at ``threshold``.

    Parameters
    ----------
    labels : array of {0, 1}
    scores : array of float
    threshold : float
        Scores at or above it are called positive.

    Returns
    -------
    float
        In [0, 1], or NaN for no samples.

    References
    ----------
    .. [1] Fawcett, "An introduction to ROC analysis", Pattern Recognition Letters 27(8), 2006.
    """
    y, s = _pair(labels, scores, "scores")
    if y.size == 0:
        return math.nan
    return float(np.mean((s >= threshold) == y))


def binary_log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean cross-entropy of positive-class probabilities.

    Parameters
    ----------
    labels : array of {0, 1}
    probs : array of float in [0, 1]
    eps : float
        Clipping of the probabilities.

    Returns
    -------
    float
        Mean negative log-likelihood in nats, or NaN for no samples.

    References
    ----------
    .. [1] Bishop, "Pattern Recognition and Machine Learning", Springer 2006, section 4.3.2.
    """
    yb, p = _pair(labels, probs, "probs")
    if yb.size == 0:
        return math.nan
    y = yb.astype(np.float64)
    p = np.clip(p, eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
