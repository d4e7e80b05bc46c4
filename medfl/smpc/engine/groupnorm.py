"""GroupNorm at inference on shares: mean and variance from shares, inverse square root by Newton.

Per group, ``mu`` and ``var`` are computed with local sums, one Beaver square and truncations.
``1/sqrt(var + eps)`` follows Newton's iteration ``y <- y (3 - v y^2) / 2``. The start comes from
one round of comparisons: ``[v_min, v_max]`` (calibrated when the model is registered) is cut
into intervals of ratio :data:`START_RATIO`, ``h = v/2`` is opened once under a dealer mask and
compared with every interior edge by evaluating one DCF key per group at the shifted points
(:func:`medfl.smpc.engine.relu.negative_bits`), and ``y0 = c / sqrt(upper edge)`` of its interval is a
public linear combination of those bits; :func:`newton_plan` picks ``c`` and the number of steps
so the relative error in exact arithmetic is below ``tol`` on every interval (checked on a dense
grid; it converges for ``0 < y0 < sqrt(3/v)``). One step takes four rounds: ``y^2`` and ``h y``
are multiplied in one opening and truncated together with ``1.5 y``, then
``y' = 1.5 y - y^2 (h y)``. Then ``gamma y`` per channel and one product over the activation
(multiplying ``(x - mu) gamma`` during Newton would save two rounds but cost a second product
over the whole activation, far more bytes than two round trips on a WAN).

References
----------
.. [1] Wu and He, "Group Normalization", ECCV 2018.
.. [2] Knott et al., "CrypTen: Secure Multi-Party Computation Meets Machine Learning",
   NeurIPS 2021 (Newton iterations for reciprocal square roots on shares).
"""

from __future__ import annotations

import functools

import numpy as np

from medfl.smpc import ring
from medfl.smpc.engine.layers import Session, divide
from medfl.smpc.engine.relu import negative_bits
from medfl.smpc.engine.truncation import truncate
from medfl.smpc.fss import comparison_bits
from medfl.smpc.ring import Shared

__all__ = ["START_RATIO", "group_norm", "mul", "newton_plan", "newton_steps"]

START_RATIO = 1.02
"""Ratio of the variance intervals of the Newton start (one step reaches 1e-3 from any of them)."""


def mul(x: Shared, y: Shared, s: Session) -> Shared:
    """Shares of the fixed-point product ``x * y`` (element-wise, same shape); two rounds."""
    a, b, c = s.dealer.mul_triple(x.s0.shape)
    op = s.channel.open(np.concatenate([(x.s0 - a.s0).ravel(), (y.s0 - b.s0).ravel()]),
                        np.concatenate([(x.s1 - a.s1).ravel(), (y.s1 - b.s1).ravel()]))
    d, e = op[: x.s0.size].reshape(x.s0.shape), op[x.s0.size:].reshape(x.s0.shape)
    z0 = d * e + d * b.s0 + e * a.s0 + c.s0
    z1 = d * b.s1 + e * a.s1 + c.s1
    return truncate(Shared(z0, z1), s.dealer.trunc_pair(x.s0.shape, s.frac_bits), s.channel)


def _products(xs: list[Shared], ys: list[Shared], s: Session) -> list[Shared]:
    """Untruncated Beaver products ``x_i * y_i`` of several pairs, all in one opening."""
    sizes = [x.s0.size for x in xs]
    x = Shared(np.concatenate([v.s0.ravel() for v in xs]), np.concatenate([v.s1.ravel() for v in xs]))
    y = Shared(np.concatenate([v.s0.ravel() for v in ys]), np.concatenate([v.s1.ravel() for v in ys]))
    a, b, c = s.dealer.mul_triple(x.s0.shape)
    op = s.channel.open(np.concatenate([x.s0 - a.s0, y.s0 - b.s0]), np.concatenate([x.s1 - a.s1, y.s1 - b.s1]))
    d, e = op[: x.s0.size], op[x.s0.size:]
    z = Shared(d * e + d * b.s0 + e * a.s0 + c.s0, d * b.s1 + e * a.s1 + c.s1)
    return _split(z, [v.s0.shape for v in xs], sizes)


def _split(z: Shared, shapes: list[tuple[int, ...]], sizes: list[int]) -> list[Shared]:
    out, at = [], 0
    for shape, n in zip(shapes, sizes, strict=True):
        out.append(Shared(z.s0[at:at + n].reshape(shape), z.s1[at:at + n].reshape(shape)))
        at += n
    return out


def _truncate_all(zs: list[Shared], s: Session) -> list[Shared]:
    """Truncate several values by ``frac_bits`` in one opening."""
    z = Shared(np.concatenate([v.s0.ravel() for v in zs]), np.concatenate([v.s1.ravel() for v in zs]))
    t = truncate(z, s.dealer.trunc_pair(z.s0.shape, s.frac_bits), s.channel)
    return _split(t, [v.s0.shape for v in zs], [v.s0.size for v in zs])


@functools.lru_cache(maxsize=256)
def newton_plan(v_min: float, v_max: float, tol: float = 1e-3) -> tuple[float, int]:
    """Start ``y0 = c / sqrt(v_max)`` and step count reaching ``tol`` on all of [v_min, v_max], fewest steps.

    References
    ----------
    .. [1] Knott et al., "CrypTen", NeurIPS 2021 (Newton iterations for reciprocal square roots).
    """
    if not 0 < v_min <= v_max:
        raise ValueError(f"need 0 < v_min <= v_max, got {v_min}, {v_max}")
    v = np.concatenate([np.geomspace(v_min, v_max, 2048), [v_min, v_max]])
    best: tuple[int, float] | None = None
    for c in np.linspace(1.0, 1.7, 36):
        y = np.full(v.shape, c / np.sqrt(v_max))
        for k in range(200):
            if np.max(np.abs(y * np.sqrt(v) - 1)) < tol / 2:  # half the tolerance: the grid is not every v
                if best is None or k < best[0]:
                    best = (k, float(c))
                break
            y = y * (3 - v * y * y) / 2
    if best is None:
        raise ValueError(f"Newton does not reach {tol} on [{v_min}, {v_max}] in 200 steps; calibrate a tighter "
                         "range")
    return best[1] / float(np.sqrt(v_max)), best[0]


def newton_steps(v_min: float, v_max: float, tol: float = 1e-3) -> int:
    """Number of Newton steps for ``1/sqrt(v)`` from ``1/sqrt(v_max)`` to reach ``tol`` on [v_min, v_max]."""
    if not 0 < v_min <= v_max:
        raise ValueError(f"need 0 < v_min <= v_max, got {v_min}, {v_max}")
    y = np.full(2, 1 / np.sqrt(v_max))
    v = np.array([v_min, v_max])
    for k in range(200):
        if np.max(np.abs(y * np.sqrt(v) - 1)) < tol:
            return k
        y = y * (3 - v * y * y) / 2
    raise ValueError(f"Newton does not reach {tol} on [{v_min}, {v_max}] in 200 steps; calibrate a tighter range")


def _const(value: float, shape: tuple[int, ...], s: Session, party: int) -> np.ndarray:
    if party == 1:
        return np.zeros(shape, np.uint64)
    return np.broadcast_to(ring.encode(np.array(value), frac_bits=s.frac_bits), shape).copy()


def group_norm(x: Shared, groups: int, gamma: Shared, beta: Shared, s: Session, *, eps: float,
               v_range: tuple[float, float], tol: float = 1e-3) -> Shared:
    """Shares of GroupNorm of (C, H, W) with the shared affine ``gamma``, ``beta`` (length C).

    References
    ----------
    .. [1] Wu and He, ECCV 2018.
    """
    c = x.s0.shape[0]
    if c % groups:
        raise ValueError(f"{c} channels do not split into {groups} groups")
    n = x.s0.size // groups
    g = [x.of(p).reshape(groups, n) for p in (0, 1)]
    mu = divide(Shared(*(gp.sum(axis=1, dtype=np.uint64) for gp in g)), n, s)
    d = Shared(*(g[p] - mu.of(p)[:, None] for p in (0, 1)))
    sq = mul(d, d, s)
    half_var = divide(Shared(*(sq.of(p).sum(axis=1, dtype=np.uint64) for p in (0, 1))), 2 * n, s)
    h = Shared(*(half_var.of(p) + _const(eps / 2, (groups,), s, p) for p in (0, 1)))  # (var + eps) / 2
    y, steps = _newton_start(h, v_range[0] + eps, v_range[1] + eps, tol, s)
    c15 = ring.encode(np.array(1.5), frac_bits=s.frac_bits)
    for _ in range(steps):
        y2, hy = _products([y, h], [y, y], s)
        y2, hy, y15 = _truncate_all([y2, hy, Shared(y.s0 * c15, y.s1 * c15)], s)
        (cube,) = _truncate_all(_products([y2], [hy], s), s)  # h y^3
        y = Shared(y15.s0 - cube.s0, y15.s1 - cube.s1)
    per_c = c // groups  # gamma y per channel (small), then one product over the activation
    scale = mul(gamma, Shared(*(np.repeat(y.of(p), per_c) for p in (0, 1))), s)
    el = Shared(*(np.repeat(scale.of(p), n // per_c).reshape(groups, n) for p in (0, 1)))
    out = mul(d, el, s)
    return Shared(*((out.of(p).reshape(x.s0.shape) + beta.of(p)[:, None, None]) for p in (0, 1)))


def _newton_start(h: Shared, lo: float, hi: float, tol: float, s: Session) -> tuple[Shared, int]:
    """Shares of the Newton start for ``1/sqrt(2h)`` from one round of comparisons, and the step count."""
    groups = h.s0.size
    y_mid, steps = newton_plan(1.0, START_RATIO, tol)  # scale-invariant: c / sqrt(top) on [top / ratio, top]
    m = max(1, int(np.ceil(np.log(hi / lo) / np.log(START_RATIO) - 1e-9)))
    edges = lo * START_RATIO ** np.arange(m + 1)
    starts = y_mid * np.sqrt(START_RATIO) / np.sqrt(edges[1:])
    if m == 1:
        return Shared(*(_const(float(starts[0]), (groups,), s, p) for p in (0, 1))), steps
    keys = s.dealer.relu_keys(groups, bits=comparison_bits(hi, s.frac_bits))
    opened = s.channel.open(h.s0 + keys.r.s0, h.s1 + keys.r.s1)
    thresholds = ring.encode(edges[1:-1] / 2, frac_bits=s.frac_bits)  # compare h = v/2 with edge/2
    points = (opened[:, None] - thresholds[None, :]).reshape(-1)
    rows = np.repeat(np.arange(groups), m - 1)
    steps_up = ring.encode(np.diff(starts), frac_bits=s.frac_bits)  # y0 change when h crosses each edge
    out = []
    for p in (0, 1):
        below = negative_bits(points, keys, p, rows, device=s.device).reshape(groups, m - 1)  # [h < edge/2]
        above = (np.uint64(1) if p == 0 else np.uint64(0)) - below
        out.append((above * steps_up[None, :]).sum(axis=1, dtype=np.uint64) + _const(float(starts[0]), (groups,),
                                                                                       s, p))
    return Shared(out[0], out[1]), steps
