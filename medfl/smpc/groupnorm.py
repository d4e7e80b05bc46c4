"""GroupNorm at inference on shares: mean and variance from shares, inverse square root by Newton.

Per group, ``mu`` and ``var`` are computed with local sums, one Beaver square and truncations.
``1/sqrt(var + eps)`` follows Newton's iteration ``y <- y (3 - v y^2) / 2`` from ``y0 =
1/sqrt(v_max)``, where ``[v_min, v_max]`` is the variance range calibrated when the model is
registered; :func:`newton_steps` picks the number of steps so the relative error in exact
arithmetic is below ``tol`` over the whole range (it converges for ``0 < y0 < sqrt(3/v)``).

References
----------
.. [1] Wu and He, "Group Normalization", ECCV 2018.
.. [2] Knott et al., "CrypTen: Secure Multi-Party Computation Meets Machine Learning",
   NeurIPS 2021 (Newton iterations for reciprocal square roots on shares).
"""

from __future__ import annotations

import numpy as np

from medfl.smpc import ring
from medfl.smpc.layers import Session, divide
from medfl.smpc.sharing import Shared
from medfl.smpc.truncation import truncate

__all__ = ["group_norm", "mul", "newton_steps"]


def mul(x: Shared, y: Shared, s: Session) -> Shared:
    """Shares of the fixed-point product ``x * y`` (element-wise, same shape); two rounds."""
    a, b, c = s.dealer.mul_triple(x.s0.shape)
    op = s.channel.open(np.concatenate([(x.s0 - a.s0).ravel(), (y.s0 - b.s0).ravel()]),
                        np.concatenate([(x.s1 - a.s1).ravel(), (y.s1 - b.s1).ravel()]))
    d, e = op[: x.s0.size].reshape(x.s0.shape), op[x.s0.size:].reshape(x.s0.shape)
    z0 = d * e + d * b.s0 + e * a.s0 + c.s0
    z1 = d * b.s1 + e * a.s1 + c.s1
    return truncate(Shared(z0, z1), s.dealer.trunc_pair(x.s0.shape, s.frac_bits), s.channel)


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
    var = divide(Shared(*(sq.of(p).sum(axis=1, dtype=np.uint64) for p in (0, 1))), n, s)
    v = Shared(*(var.of(p) + _const(eps, (groups,), s, p) for p in (0, 1)))
    y = Shared(*(_const(1 / np.sqrt(v_range[1] + eps), (groups,), s, p) for p in (0, 1)))
    half3 = Shared(*(_const(1.5, (groups,), s, p) for p in (0, 1)))
    for _ in range(newton_steps(v_range[0] + eps, v_range[1] + eps, tol)):
        vy2 = mul(mul(y, y, s), v, s)
        hv = truncate(Shared(*(vy2.of(p) * np.uint64(2 ** (s.frac_bits - 1)) for p in (0, 1))),
                      s.dealer.trunc_pair((groups,), s.frac_bits), s.channel)  # v y^2 / 2
        y = mul(y, Shared(*(half3.of(p) - hv.of(p) for p in (0, 1))), s)
    per_c = c // groups
    scale = mul(gamma, Shared(*(np.repeat(y.of(p), per_c) for p in (0, 1))), s)
    el = Shared(*(np.repeat(scale.of(p), n // per_c).reshape(groups, n) for p in (0, 1)))
    out = mul(d, el, s)
    return Shared(*((out.of(p).reshape(x.s0.shape) + beta.of(p)[:, None, None]) for p in (0, 1)))
