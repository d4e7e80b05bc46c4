"""Accountant of the distributed discrete Gaussian: client-level epsilon of rounds of secure sums.

Each of the ``n`` agents whose updates enter the sum adds ``N_Z(0, sigma^2)`` in the integer
domain; the sum of the ``n`` noises is not a discrete Gaussian but is close to one, and by
Kairouz, Liu and Steinke (2021), theorem 1 / proposition 14, the noisy sum of vectors of L2
sensitivity ``Delta_2`` in ``d`` dimensions is ``eps^2 / 2``-concentrated DP (zCDP, i.e. RDP
``alpha * eps^2 / 2`` at every order) with

    eps = min( sqrt(Delta_2^2 / (n sigma^2) + tau d / 2),  Delta_2 / (sqrt(n) sigma) + tau sqrt(d) ),
    tau = 10 * sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k / (k + 1)).

Rounds compose by adding zCDP parameters; epsilon at delta comes from ``dp-accounting``'s RDP
conversion (``dp_accounting.rdp.compute_epsilon``, the conversion of Canonne, Kamath and
Steinke 2020, proposition 12) on the same orders as the DP-SGD accountant. ``dp-accounting`` has
no distributed-discrete-Gaussian event, so the per-round RDP curve is the paper's bound.

The sensitivity is that of conditional randomized rounding (:mod:`medfl.privacy.distributed_dp`):
a vector clipped to L2 norm ``c``, scaled by ``1 / gamma`` and rounded so that its squared norm
stays below the paper's bound (theorem 1 / lemma 28)

    Delta_2^2 = min( c^2/gamma^2 + d/4 + sqrt(2 ln(1/beta)) (c/gamma + sqrt(d)/2),  (c/gamma + sqrt(d))^2 ).

Dropouts: the noise of a round is that of its survivors. An agent's share is sized for the
secure sum's threshold ``t`` (the fewest survivors a round completes with), so
:func:`round_epsilon` at ``n = t`` bounds every completed round; with ``n`` survivors above
``t`` the round is more private, and both figures are reported.

References
----------
.. [1] P. Kairouz, Z. Liu, T. Steinke, "The Distributed Discrete Gaussian Mechanism for Federated
   Learning with Secure Aggregation", ICML 2021, theorem 1, proposition 14.
.. [2] C. Canonne, G. Kamath, T. Steinke, "The Discrete Gaussian for Differential Privacy",
   NeurIPS 2020.
.. [3] M. Bun, T. Steinke, "Concentrated Differential Privacy", TCC 2016 (composition).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from dp_accounting import rdp

__all__ = ["ORDERS", "epsilon", "planned_epsilon", "rounded_sensitivity", "round_rho", "tau"]

#: RDP orders of the conversion (those of dp-accounting's RdpAccountant default, plus large ones)
ORDERS: tuple[float, ...] = tuple([1.0 + x / 10.0 for x in range(1, 100)] + list(range(11, 64))
                                  + [128.0, 256.0, 512.0, 1024.0])


def tau(sigma: float, n: int) -> float:
    """The paper's ``tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k/(k+1))``.

    It measures how far the sum of ``n`` discrete Gaussians is from one.
    """
    return 10.0 * sum(math.exp(-2.0 * math.pi ** 2 * sigma * sigma * k / (k + 1)) for k in range(1, n))


def rounded_sensitivity(*, clip: float, gamma: float, dim: int, beta: float) -> float:
    """L2 sensitivity in the integer domain after conditional randomized rounding at ``beta``.

    ``beta = 0`` means unconditional rounding (the second, deterministic term only).

    References
    ----------
    .. [1] Kairouz, Liu and Steinke 2021, theorem 1 (the norm bound of conditional rounding).
    """
    if not (clip > 0 and gamma > 0 and dim >= 1 and 0 <= beta < 1):
        raise ValueError(f"need clip > 0, gamma > 0, dim >= 1, 0 <= beta < 1; got {clip}, {gamma}, {dim}, {beta}")
    r = clip / gamma
    loose = (r + math.sqrt(dim)) ** 2
    if beta == 0:
        return math.sqrt(loose)
    tight = r * r + dim / 4.0 + math.sqrt(2.0 * math.log(1.0 / beta)) * (r + math.sqrt(dim) / 2.0)
    return math.sqrt(min(tight, loose))


def round_rho(*, sensitivity: float, sigma: float, n: int, dim: int) -> float:
    """The zCDP parameter ``eps^2 / 2`` of one secure sum of ``n`` agents each adding ``N_Z(0, sigma^2)``.

    References
    ----------
    .. [1] Kairouz, Liu and Steinke 2021, theorem 1 / proposition 14.
    """
    if not (sensitivity > 0 and sigma > 0 and n >= 1 and dim >= 1):
        raise ValueError(f"need sensitivity, sigma > 0 and n, dim >= 1; got {sensitivity}, {sigma}, {n}, {dim}")
    tu = tau(sigma, n)
    a = math.sqrt(sensitivity ** 2 / (n * sigma * sigma) + 0.5 * tu * dim)
    b = sensitivity / (math.sqrt(n) * sigma) + tu * math.sqrt(dim)
    return 0.5 * min(a, b) ** 2


def epsilon(rhos: Sequence[float], delta: float) -> float:
    """Epsilon at ``delta`` of rounds with zCDP parameters ``rhos`` (composed by addition).

    References
    ----------
    .. [1] Bun and Steinke 2016 (composition); dp-accounting's RDP-to-(eps, delta) conversion.
    """
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    total = float(sum(rhos))
    if total == 0:
        return 0.0
    orders = np.asarray(ORDERS)
    return float(rdp.compute_epsilon(orders, orders * total, delta)[0])


def planned_epsilon(*, noise_multiplier: float, rounds: int, delta: float) -> float:
    """Client-level epsilon at ``delta`` of ``rounds`` rounds at noise multiplier ``z``, each at ``t`` survivors.

    With every share sized for the threshold (``sigma = z Delta_2 / sqrt(t)``, see
    :mod:`medfl.privacy.distributed_dp`), a round's zCDP is ``1 / (2 z^2)`` plus the ``tau`` term,
    which is below 1e-300 for the integer-domain sigma client-level DP uses (thousands); this is
    the figure an agent's policy compares with ``max_client_epsilon`` before it accepts a job.
    """
    if not (noise_multiplier > 0 and rounds >= 1):
        raise ValueError(f"need noise_multiplier > 0 and rounds >= 1, got {noise_multiplier}, {rounds}")
    return epsilon([0.5 / noise_multiplier ** 2] * rounds, delta)
