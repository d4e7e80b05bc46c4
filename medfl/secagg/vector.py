"""The layout of what an agent masks in a secure round: weighted update, weight, metrics.

Secure aggregation reveals only a sum, so everything FedAvg and the round table need is put in
the summed vector, weighted, and divided out at the coordinator:

- **fit**: ``[u * clip(delta), u * s, v * s, v * s * loss / LOSS_CAP]`` where ``delta`` is the
  agent's trained weights minus the global weights (float tensors, sorted by name, flattened),
  scaled to the L2 bound ``clip_norm`` (and each coordinate clamped to it, which is what the
  ring's no-wrap bound needs); ``u = min(samples, sample_cap) / sample_cap`` the
  agent's FedAvg weight (at most 1); ``s = min(1, clip_norm)`` keeps the scalars within the
  bound; ``v = u`` when the training loss is finite and 0 otherwise; the loss is clamped to
  ``[0, LOSS_CAP]``.
- **evaluate**: for each metric of the job's task (:func:`metric_names`: ``auc``, ``accuracy``
  and ``loss`` for classification; ``dice``, ``loss``, ``hd95`` and ``dice_1`` .. ``dice_{K-1}``
  for segmentation) the pair ``[v_m * s, v_m * s * m']`` with
  ``v_m = min(n_val, sample_cap) / sample_cap`` when the metric is finite (else 0: a site whose
  validation cases lack a class does not dilute that class's Dice) and ``m'`` the metric (loss
  and HD95 divided by ``LOSS_CAP``, clamped to ``[0, 1]``), then ``u * s``.

- **fit under client-level DP** (``[privacy] level = "client"`` or ``"both"``): the delta alone
  (:func:`pack_delta`, :func:`client_fit_length` values), encoded into the ring by
  :func:`medfl.privacy.distributed_dp.encode_update` (clipped to ``clip_norm``, conditionally
  rounded, discrete Gaussian noise added) before the masks go on. Every agent weighs the same
  (the mean over the survivors, whose number the coordinator knows), and no sample count or
  training loss enters the sum: an exact count or loss beside the noised delta would be a
  release the client-level guarantee does not cover. :func:`unpack_client_fit` divides the
  decoded sum by the survivors.

Every coordinate is within ``clip_norm`` in absolute value, which is what
:class:`~medfl.secagg.quantization.QuantSpec` needs so that the sum cannot wrap. The sum of
the ``u_i * delta_i`` divided by the sum of the ``u_i`` is the FedAvg mean delta; sample counts
and validation metrics are aggregated the same way and never leave an agent in the clear.

Compatibility: the layout is part of the protocol; a change gets a new ``layout`` name.

References
----------
.. [1] McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
   Data", AISTATS 2017 (weights by sample count).
.. [2] Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
   CCS 2017 (only the sum is learnt).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from medfl.errors import NonFiniteError, ShareError

__all__ = ["LAYOUT", "LOSS_CAP", "FitSum", "MetricsSum", "client_fit_length", "fit_length", "float_names",
           "metric_names", "metrics_length", "pack_delta", "pack_fit", "pack_metrics", "unpack_client_fit",
           "unpack_fit", "unpack_metrics"]

LAYOUT = "medfl-secagg-vector-v1"
LOSS_CAP = 100.0
METRICS = ("auc", "accuracy", "loss")
_FIT_EXTRA = 3
METRICS_LENGTH = 2 * len(METRICS) + 1
#: metrics divided by LOSS_CAP before they are summed (unbounded above: a loss, a distance in voxels)
_SCALED = ("loss", "hd95")


def metric_names(task: str = "classification", num_classes: int = 2) -> tuple[str, ...]:
    """The validation metrics a job of ``task`` sums, in vector order.

    Parameters
    ----------
    task : {"classification", "segmentation"}
    num_classes : int
        Classes of a segmentation model, background included (``dice_1`` .. ``dice_{K-1}``).
    """
    if task == "classification":
        return METRICS
    if task == "segmentation":
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"a segmentation job needs num_classes >= 2, got {num_classes!r}")
        return ("dice", "loss", "hd95", *(f"dice_{k}" for k in range(1, num_classes)))
    raise ValueError(f"no secure metrics for task {task!r}")


def metrics_length(names: tuple[str, ...] = METRICS) -> int:
    """Length of the evaluate vector for these metric names."""
    return 2 * len(names) + 1


def float_names(arrays: Mapping[str, np.ndarray]) -> list[str]:
    """The tensors that are averaged: floating-point ones, sorted by name."""
    return sorted(k for k, v in arrays.items() if np.issubdtype(np.asarray(v).dtype, np.floating))


def fit_length(arrays: Mapping[str, np.ndarray]) -> int:
    """Length of the fit vector for a model with these global arrays."""
    return sum(int(np.asarray(arrays[k]).size) for k in float_names(arrays)) + _FIT_EXTRA


def client_fit_length(arrays: Mapping[str, np.ndarray]) -> int:
    """Length of the client-level DP fit vector (the delta alone) for a model with these global arrays."""
    return fit_length(arrays) - _FIT_EXTRA


def pack_delta(global_arrays: Mapping[str, np.ndarray], trained: Mapping[str, np.ndarray]) -> tuple[np.ndarray, float]:
    """The flat float64 delta ``trained - global`` (float tensors, sorted by name) and its L2 norm.

    Raises
    ------
    NonFiniteError
        The trained weights hold NaN or infinity.
    ValueError
        The names or shapes differ from the global model's.
    """
    names = float_names(global_arrays)
    if set(float_names(trained)) != set(names):
        raise ValueError(f"trained tensors {sorted(float_names(trained))[:5]}... do not match the global model's "
                         f"{names[:5]}...")
    parts = []
    for k in names:
        g, t = np.asarray(global_arrays[k]), np.asarray(trained[k])
        if g.shape != t.shape:
            raise ValueError(f"tensor {k!r} has shape {t.shape}, the global model's is {g.shape}")
        parts.append(t.reshape(-1).astype(np.float64) - g.reshape(-1).astype(np.float64))
    delta = np.concatenate(parts) if parts else np.zeros(0)
    norm = float(np.linalg.norm(delta))
    if not math.isfinite(norm):
        bad = int(np.flatnonzero(~np.isfinite(delta))[0])
        raise NonFiniteError(f"update element {bad} is {delta[bad]}; a non-finite update cannot be aggregated")
    return delta, norm


def _weight(count: float, sample_cap: int) -> float:
    if not (math.isfinite(count) and count >= 0):
        raise ValueError(f"sample count must be a finite number >= 0, got {count}")
    return min(float(count), float(sample_cap)) / float(sample_cap)


def pack_fit(global_arrays: Mapping[str, np.ndarray], trained: Mapping[str, np.ndarray], *, num_samples: int,
             train_loss: float, clip_norm: float, sample_cap: int,
             out: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Build an agent's fit vector (float32) and return it with the delta's norm before clipping.

    Parameters
    ----------
    global_arrays, trained : mapping of str to ndarray
        The round's global weights and this agent's trained weights (same names and shapes).
    num_samples : int
        Training samples (the FedAvg weight before capping).
    train_loss : float
        Mean local training loss (non-finite: excluded from the loss average).
    clip_norm : float
        L2 bound of the delta.
    sample_cap : int
        Sample count that maps to weight 1.
    out : ndarray, optional
        Where to build the vector: a writable C-contiguous float32 vector of
        :func:`fit_length` elements (e.g. a :class:`medfl.buffers.VectorPool` vector).
        Its contents are undefined if this raises.

    Raises
    ------
    NonFiniteError
        The trained weights hold NaN or infinity.
    ValueError
        The names or shapes differ from the global model's.
    """
    names = float_names(global_arrays)
    if set(float_names(trained)) != set(names):
        raise ValueError(f"trained tensors {sorted(float_names(trained))[:5]}... do not match the global model's "
                         f"{names[:5]}...")
    n = fit_length(global_arrays) - _FIT_EXTRA
    if out is None:
        out = np.empty(n + _FIT_EXTRA, dtype=np.float32)
    elif (not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != (n + _FIT_EXTRA,)
          or not out.flags.c_contiguous or not out.flags.writeable):
        raise ValueError(f"out must be a writable C-contiguous float32 vector of {n + _FIT_EXTRA} elements, got "
                         f"{getattr(out, 'dtype', type(out).__name__)} shape {getattr(out, 'shape', None)}")
    pos = 0
    for k in names:  # one pass: each delta is written straight into the vector
        g, t = np.asarray(global_arrays[k]), np.asarray(trained[k])
        if g.shape != t.shape:
            raise ValueError(f"tensor {k!r} has shape {t.shape}, the global model's is {g.shape}")
        np.subtract(t.reshape(-1), g.reshape(-1), out=out[pos:pos + g.size], casting="same_kind")
        pos += g.size
    delta = out[:n]
    norm = math.sqrt(float(np.dot(delta, delta)))  # float32 BLAS dot; relative error far below the clip's purpose
    if not math.isfinite(norm):
        bad = int(np.flatnonzero(~np.isfinite(delta))[0])
        raise NonFiniteError(f"update element {bad} is {delta[bad]}; a non-finite update cannot be aggregated")
    u = _weight(num_samples, sample_cap)
    scale = u * (min(1.0, clip_norm / norm) if norm > 0 else 1.0)
    np.multiply(delta, np.float32(scale), out=delta)
    # the ring's no-wrap bound is per coordinate: make it exact whatever the rounding above did
    np.clip(delta, -clip_norm, clip_norm, out=delta)
    s = min(1.0, clip_norm)
    v = u if math.isfinite(train_loss) else 0.0
    loss = min(max(train_loss, 0.0), LOSS_CAP) / LOSS_CAP if math.isfinite(train_loss) else 0.0
    out[n:] = (u * s, v * s, v * s * loss)
    return out, norm


@dataclass(frozen=True)
class FitSum:
    """What the coordinator learns from the unmasked fit sum.

    Attributes
    ----------
    mean_delta : dict of str to ndarray
        FedAvg mean of the agents' clipped deltas (float32), by tensor name.
    num_samples : int
        Sum of the agents' capped sample counts.
    train_loss : float or None
        Sample-weighted mean training loss (None if no agent had a finite loss).
    """

    mean_delta: dict[str, np.ndarray]
    num_samples: int
    train_loss: float | None


def unpack_fit(total: np.ndarray, global_arrays: Mapping[str, np.ndarray], *, clip_norm: float,
               sample_cap: int) -> FitSum:
    """Turn the unmasked, dequantized fit sum into the FedAvg mean delta and the round's stats.

    Raises
    ------
    ShareError
        The vector has the wrong length, or the total weight is not positive (every agent
        reported zero samples).
    """
    names = float_names(global_arrays)
    n = fit_length(global_arrays) - _FIT_EXTRA
    flat = np.asarray(total, dtype=np.float32).reshape(-1)
    if flat.size != n + _FIT_EXTRA:
        raise ShareError(f"fit sum has {flat.size} elements, the model needs {n + _FIT_EXTRA}")
    if not np.isfinite(np.sum(flat, dtype=np.float64)):  # NaN or inf anywhere (float32 values cannot overflow it)
        raise NonFiniteError("the unmasked fit sum holds non-finite values")
    s = min(1.0, clip_norm)
    extra = flat[n:].astype(np.float64)
    weight, loss_weight, loss_sum = extra[0] / s, extra[1] / s, extra[2] / s
    if not weight > 0.5 / sample_cap:
        raise ShareError(f"total FedAvg weight {weight:.3g} of the round is not positive: every agent reported 0 "
                         "samples")
    mean = flat[:n] * np.float32(1.0 / weight)  # float32 like the model; the sum was decoded to float32
    out, pos = {}, 0
    for k in names:
        shape = np.shape(global_arrays[k])
        size = int(np.prod(shape, dtype=np.int64))
        out[k] = mean[pos:pos + size].reshape(shape)
        pos += size
    loss = loss_sum / loss_weight * LOSS_CAP if loss_weight > 0.5 / sample_cap else None
    return FitSum(mean_delta=out, num_samples=int(round(weight * sample_cap)), train_loss=loss)


def unpack_client_fit(total: np.ndarray, global_arrays: Mapping[str, np.ndarray], *, gamma: float,
                      survivors: int) -> FitSum:
    """The mean delta of a client-level DP fit sum: the decoded ring sum times ``gamma`` over ``survivors``.

    ``total`` is the unmasked sum decoded with 0 fractional bits (the signed integers as floats).
    The sample count (0) and training loss (None) are not released under client-level DP.

    Raises
    ------
    ShareError
        The vector has the wrong length or there are no survivors.
    NonFiniteError
        The sum holds non-finite values.
    """
    n = client_fit_length(global_arrays)
    flat = np.asarray(total).reshape(-1)
    if flat.size != n:
        raise ShareError(f"client-level fit sum has {flat.size} elements, the model needs {n}")
    if survivors < 1:
        raise ShareError(f"a client-level fit sum needs at least one survivor, got {survivors}")
    mean = flat.astype(np.float64) * (gamma / survivors)
    if not np.isfinite(mean).all():
        raise NonFiniteError("the unmasked client-level fit sum holds non-finite values")
    out, pos = {}, 0
    for k in float_names(global_arrays):
        shape = np.shape(global_arrays[k])
        size = int(np.prod(shape, dtype=np.int64))
        out[k] = mean[pos:pos + size].astype(np.float32).reshape(shape)
        pos += size
    return FitSum(mean_delta=out, num_samples=0, train_loss=None)


def pack_metrics(metrics: Mapping[str, float], *, clip_norm: float, sample_cap: int,
                 names: tuple[str, ...] = METRICS) -> np.ndarray:
    """Build an agent's evaluate vector from its validation metrics (``n`` and each of ``names``).

    A metric missing from ``metrics`` counts as not measured (weight 0), like NaN.
    """
    u = _weight(float(metrics["n"]), sample_cap)
    s = min(1.0, clip_norm)
    out = []
    for m in names:
        value = float(metrics.get(m, math.nan))
        if not math.isfinite(value):
            out += [0.0, 0.0]
            continue
        value = min(max(value, 0.0), LOSS_CAP) / LOSS_CAP if m in _SCALED else min(max(value, 0.0), 1.0)
        out += [u * s, u * s * value]
    out.append(u * s)
    return np.asarray(out, dtype=np.float32)


@dataclass(frozen=True)
class MetricsSum:
    """Sample-weighted validation metrics of the round (None where no agent had a finite value).

    ``extra`` holds the metrics other than auc, accuracy and loss (a segmentation job's Dice and HD95).
    """

    n: int
    auc: float | None
    accuracy: float | None
    loss: float | None
    extra: dict[str, float | None] = field(default_factory=dict)


def unpack_metrics(total: np.ndarray, *, clip_norm: float, sample_cap: int,
                   names: tuple[str, ...] = METRICS) -> MetricsSum:
    """Turn the unmasked evaluate sum into weighted-mean metrics."""
    total = np.asarray(total, dtype=np.float64).reshape(-1)
    if total.size != metrics_length(names):
        raise ShareError(f"metrics sum has {total.size} elements, expected {metrics_length(names)}")
    s = min(1.0, clip_norm)
    got: dict[str, float | None] = {}
    for i, m in enumerate(names):
        w, ws = total[2 * i] / s, total[2 * i + 1] / s
        value = ws / w if w > 0.5 / sample_cap else None
        got[m] = value * LOSS_CAP if (value is not None and m in _SCALED) else value
    return MetricsSum(n=int(round(total[-1] / s * sample_cap)), auc=got.pop("auc", None),
                      accuracy=got.pop("accuracy", None), loss=got.pop("loss", None), extra=got)
