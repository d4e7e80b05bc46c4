"""Typed bodies of the messages an agent sends during a job: UPDATE, METRICS, JOB_REFUSE, the privacy report.

The coordinator checks each body into a frozen value before it believes any of it, as it does
HELLO (:mod:`medfl.wire.hello`): counts are non-negative integers (a bool is not one), rates and
AUCs lie in [0, 1] or are NaN (not measured), losses are non-negative or NaN, epsilon and delta are
finite and non-negative, a refusal's reason is a string of bounded length. Every bad field is
named in one :class:`~medfl.errors.MalformedMessage`; unknown fields are ignored (the
compatibility rule of :mod:`medfl.wire.messages`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from medfl.errors import MalformedMessage
from medfl.safetext import escape

__all__ = ["MetricsBody", "PrivacyReport", "RefuseBody", "UpdateBody", "parse_metrics", "parse_refuse",
           "parse_report", "parse_update"]

#: the largest count accepted (samples in one hospital's split)
MAX_COUNT = 10**9
#: the longest refusal reason kept
MAX_REASON = 2000


class _Fields:
    """Collects the problems of one body, so all of them are reported at once."""

    def __init__(self, what: str, body: Any):
        if not isinstance(body, dict):
            raise MalformedMessage(f"{what} body must be a map, got {type(body).__name__}")
        self.what, self.body = what, body
        self.problems: list[str] = []

    def count(self, key: str, *, default: int | None = None, integral_float: bool = False) -> int:
        v = self.body.get(key, default)
        if isinstance(v, float) and integral_float and math.isfinite(v) and v.is_integer():
            v = int(v)
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_COUNT:
            self.problems.append(f"{key} must be an integer in 0..{MAX_COUNT}, got {escape(repr(v), limit=40)}")
            return 0
        return v

    def real(self, key: str, *, lo: float = 0.0, hi: float = math.inf, nan_ok: bool = True,
             optional: bool = True) -> float | None:
        v = self.body.get(key)
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.problems.append(f"{key} must be a number, got {escape(repr(v), limit=40)}")
            return None
        x = float(v)
        if math.isnan(x) and nan_ok:
            return x
        if not (lo <= x <= hi) or not math.isfinite(x):
            rng = f"[{lo:g}, {hi:g}]" if math.isfinite(hi) else f">= {lo:g} and finite"
            self.problems.append(f"{key} must be {rng}{' or NaN' if nan_ok else ''}, got {x!r}")
            return None
        return x

    def done(self) -> None:
        if self.problems:
            raise MalformedMessage(f"{self.what} body: " + "; ".join(self.problems))


@dataclass(frozen=True)
class UpdateBody:
    """UPDATE: the samples trained on, the training loss, the seconds, and the job's DP cost at this agent."""

    num_samples: int
    train_loss: float
    seconds: float | None
    epsilon: float | None
    delta: float | None


def parse_update(body: Any) -> UpdateBody:
    """Check an UPDATE body (see the module docstring for the rules)."""
    f = _Fields("update", body)
    n = f.count("num_samples", default=0)
    loss = f.real("train_loss")
    seconds = f.real("seconds", nan_ok=False)
    eps = f.real("epsilon", nan_ok=False)
    delta = f.real("delta", hi=1.0, nan_ok=True)
    f.done()
    return UpdateBody(num_samples=n, train_loss=math.nan if loss is None else loss, seconds=seconds, epsilon=eps,
                      delta=delta)


@dataclass(frozen=True)
class MetricsBody:
    """METRICS: validation samples and the new global model's AUC, accuracy and log loss there (NaN: not measured)."""

    n: int
    auc: float
    accuracy: float
    loss: float
    #: a segmentation job's ``dice``, ``dice_1`` .. ``dice_K`` (in [0, 1]) and ``hd95`` (voxels)
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        """The values as floats (the plain round's bookkeeping)."""
        return {"n": float(self.n), "auc": self.auc, "accuracy": self.accuracy, "loss": self.loss, **self.extra}


#: segmentation classes a METRICS body may name (``dice_1`` .. ``dice_{MAX_CLASSES}``)
MAX_CLASSES = 64
_SEG_KEYS = {"dice": 1.0, "hd95": math.inf, **{f"dice_{k}": 1.0 for k in range(1, MAX_CLASSES + 1)}}


def parse_metrics(body: Any) -> MetricsBody:
    """Check a METRICS body; ``n`` may arrive as an integral float (the agent sends floats).

    Keys other than n, auc, accuracy, loss and the segmentation metrics are refused.
    """
    f = _Fields("metrics", body)
    n = f.count("n", integral_float=True)
    auc, acc = f.real("auc", hi=1.0), f.real("accuracy", hi=1.0)
    loss = f.real("loss")
    extra: dict[str, float] = {}
    for key in sorted(set(body) - {"n", "auc", "accuracy", "loss"}, key=str):
        if key not in _SEG_KEYS:
            f.problems.append(f"unknown metric {escape(repr(key), limit=40)}")
            continue
        v = f.real(key, hi=_SEG_KEYS[key])
        if v is not None:
            extra[key] = v
    f.done()
    nan = math.nan
    return MetricsBody(n=n, auc=nan if auc is None else auc, accuracy=nan if acc is None else acc,
                       loss=nan if loss is None else loss, extra=extra)


@dataclass(frozen=True)
class RefuseBody:
    """JOB_REFUSE: the reason (the agent's policy or budget, as text) and whether it is the privacy budget."""

    reason: str
    budget: bool


def parse_refuse(body: Any) -> RefuseBody:
    """Check a JOB_REFUSE body; the reason is kept as text (escaped wherever it is shown)."""
    f = _Fields("job_refuse", body)
    reason = body.get("reason", "no reason given")
    if not isinstance(reason, str):
        f.problems.append(f"reason must be a string, got {type(reason).__name__}")
        reason = ""
    budget = body.get("budget", False)
    if not isinstance(budget, bool):
        f.problems.append(f"budget must be true or false, got {escape(repr(budget), limit=40)}")
        budget = False
    f.done()
    if len(reason) > MAX_REASON:
        reason = reason[:MAX_REASON] + f"... ({len(reason) - MAX_REASON} more characters)"
    return RefuseBody(reason=reason, budget=budget)


@dataclass(frozen=True)
class PrivacyReport:
    """The clear report beside a masked input: the job's epsilon and delta at this agent (None: no DP)."""

    epsilon: float | None
    delta: float | None


def parse_report(report: Any) -> PrivacyReport:
    """Check the ``report`` of a MASKED_INPUT (absent or empty: no DP)."""
    if report is None or report == {}:
        return PrivacyReport(epsilon=None, delta=None)
    f = _Fields("masked_input report", report)
    eps = f.real("epsilon", nan_ok=False)
    delta = f.real("delta", hi=1.0, nan_ok=False)
    f.done()
    return PrivacyReport(epsilon=eps, delta=delta)
