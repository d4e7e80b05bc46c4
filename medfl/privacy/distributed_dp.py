"""Client-level DP inside secure aggregation: the distributed discrete Gaussian's encode and decode.

An agent's whole model update ``x`` (``d`` floats) becomes a ring vector as in Kairouz, Liu and
Steinke (2021), algorithm 1, without the random rotation (see below):

1. clip to L2 norm ``clip`` (the client-level sensitivity);
2. scale by ``1 / gamma`` with ``gamma = clip / (granularity * sqrt(d))``, so the rounding error
   (about ``sqrt(d) / 2`` in norm) is ``1 / (2 granularity)`` of the signal's norm bound;
3. conditional randomized rounding: each coordinate rounds down or up with the probability of its
   fractional part (unbiased), redrawn until the squared norm is at most the paper's bound (a
   draw fails with probability at most ``beta``), so the integer vector's L2 sensitivity is
   :func:`~medfl.privacy.ddg_accountant.rounded_sensitivity`;
4. add ``N_Z(0, sigma^2)`` noise with ``sigma = z * Delta_2 / sqrt(t)`` (native kernel,
   :mod:`medfl.native.ddg`), in the ring ``Z_2^k``; then the secure sum's masks go on, so the
   coordinator only ever sees the masked vector and, after unmasking, the noisy sum.

Dropouts (documented choice): each share is sized for the secure sum's threshold ``t``, the fewest
survivors a round can complete with (fewer and SecAgg aborts the round), so any completed round
carries at least ``z^2 Delta_2^2`` of noise variance in total and is never under-noised; more
survivors add more noise than needed (the accountant reports both figures).

Modular clipping: the sum of ``n`` encodings lies in ``[-B, B]`` per coordinate except with
probability at most ``2 d exp(-kappa^2 / 2)`` (DG tails are sub-Gaussian), with
``B = n (r + 1) + kappa sqrt(n) sigma``, ``r = clip / gamma`` and ``kappa = 12``; the ring is
the smallest of 32 and 64 bits with ``B < 2^(k-1)`` (:meth:`ClientDP.ring_bits_for`). The paper's
random rotation flattens vectors so that a small modulus (16-18 bits, for compression) rarely
wraps; medfl's ring is 32 or 64 bits, large enough for the unrotated bound, so it is left out.

References
----------
.. [1] P. Kairouz, Z. Liu, T. Steinke, "The Distributed Discrete Gaussian Mechanism for Federated
   Learning with Secure Aggregation", ICML 2021, algorithm 1, theorem 1.
.. [2] C. Canonne, G. Kamath, T. Steinke, "The Discrete Gaussian for Differential Privacy", NeurIPS 2020.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medfl import csprng
from medfl.errors import NonFiniteError, SecAggAbort
from medfl.native.ddg import add_discrete_gaussian
from medfl.privacy import ddg_accountant

__all__ = ["KAPPA", "ClientDP", "conditional_round", "decode_sum", "encode_update"]

#: tail multiple of the modular clipping bound (2 d exp(-72) wrap probability)
KAPPA = 12.0
#: conditional rounding redraws before giving up (each fails with probability <= beta)
MAX_ROUNDING_DRAWS = 64


@dataclass(frozen=True)
class ClientDP:
    """Parameters of client-level DP for one vector layout (the same at every agent of a round).

    Attributes
    ----------
    clip : float
        L2 bound of an agent's whole update.
    noise_multiplier : float
        ``z``: the total noise std at ``t`` survivors over the integer-domain sensitivity.
    dim : int
        Vector length ``d``.
    threshold : int
        Secure sum threshold ``t`` (fewest survivors of a completed round).
    beta : float
        Conditional rounding's failure bound (the paper uses ``exp(-1/2)``).
    granularity : float
        ``clip / gamma`` over ``sqrt(d)``.
    """

    clip: float
    noise_multiplier: float
    dim: int
    threshold: int
    beta: float = math.exp(-0.5)
    granularity: float = 16.0

    def __post_init__(self) -> None:
        """Refuse parameters the mechanism cannot use."""
        bad = []
        if not (math.isfinite(self.clip) and self.clip > 0):
            bad.append(f"clip must be a finite number > 0, got {self.clip}")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            bad.append(f"noise_multiplier must be > 0, got {self.noise_multiplier}")
        if self.dim < 1 or self.threshold < 1:
            bad.append(f"dim and threshold must be >= 1, got {self.dim}, {self.threshold}")
        if not 0 <= self.beta < 1 or not self.granularity >= 1:
            bad.append(f"need 0 <= beta < 1 and granularity >= 1, got {self.beta}, {self.granularity}")
        if bad:
            raise ValueError("; ".join(bad))

    @property
    def gamma(self) -> float:
        """Width of one integer step in the update's units."""
        return self.clip / (self.granularity * math.sqrt(self.dim))

    @property
    def sensitivity(self) -> float:
        """L2 sensitivity of one encoding in the integer domain (conditional rounding's bound)."""
        return ddg_accountant.rounded_sensitivity(clip=self.clip, gamma=self.gamma, dim=self.dim, beta=self.beta)

    @property
    def sigma(self) -> float:
        """Each agent's discrete Gaussian parameter: sized so ``t`` shares reach ``z * Delta_2``."""
        return self.noise_multiplier * self.sensitivity / math.sqrt(self.threshold)

    def modular_bound(self, n: int) -> float:
        """``B``: the sum of ``n`` encodings stays in ``[-B, B]`` but with probability ``2 d exp(-KAPPA^2/2)``."""
        return n * (self.clip / self.gamma + 1.0) + KAPPA * math.sqrt(n) * self.sigma

    def ring_bits_for(self, n: int) -> int:
        """The smallest ring (32 or 64 bits) whose signed range holds :meth:`modular_bound` of ``n`` agents."""
        b = self.modular_bound(n)
        for bits in (32, 64):
            if b < 2.0 ** (bits - 1):
                return bits
        raise ValueError(f"{n} agents with clip/gamma={self.clip / self.gamma:.3g} and sigma={self.sigma:.3g} do not "
                         "fit a 64-bit ring; lower granularity")

    def round_rho(self, survivors: int) -> float:
        """The zCDP of one round whose sum holds ``survivors`` (>= threshold) shares."""
        if survivors < self.threshold:
            raise SecAggAbort(f"{survivors} survivors is below the threshold t={self.threshold}: the round aborts")
        return ddg_accountant.round_rho(sensitivity=self.sensitivity, sigma=self.sigma, n=survivors, dim=self.dim)


def _uniforms(n: int) -> np.ndarray:
    words = np.frombuffer(csprng.expand(8 * n), dtype="<u8")
    return ((words >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def conditional_round(y: np.ndarray, *, bound_sq: float) -> np.ndarray:
    """Unbiased randomized rounding of ``y`` (float64), redrawn until ``||round(y)||^2 <= bound_sq``.

    Raises
    ------
    SecAggAbort
        :data:`MAX_ROUNDING_DRAWS` draws all exceeded the bound (probability beta^64).

    References
    ----------
    .. [1] Kairouz, Liu and Steinke 2021, algorithm 1, step "conditional randomized rounding".
    """
    low = np.floor(y)
    frac = y - low
    for _ in range(MAX_ROUNDING_DRAWS):
        r = low + (_uniforms(y.size) < frac)
        if float(np.dot(r, r)) <= bound_sq:
            return r.astype(np.int64)
    raise SecAggAbort(f"conditional rounding exceeded its norm bound {MAX_ROUNDING_DRAWS} times; refusing to upload")


def encode_update(x: np.ndarray, spec: ClientDP, *, ring_bits: int, noise_key: bytes | None = None) -> np.ndarray:
    """Clip, scale, conditionally round and noise ``x``: the ring vector an agent then masks.

    Parameters
    ----------
    x : ndarray
        The flat update (any float dtype), ``spec.dim`` long.
    spec : ClientDP
        The round's parameters.
    ring_bits : int
        32 or 64 (from :meth:`ClientDP.ring_bits_for` of the round's agent count).
    noise_key : bytes, optional
        The noise's ChaCha20 key (tests only; fresh from the OS CSPRNG by default).

    References
    ----------
    .. [1] Kairouz, Liu and Steinke 2021, algorithm 1.
    """
    v = np.asarray(x, dtype=np.float64).reshape(-1)
    if v.size != spec.dim:
        raise ValueError(f"update has {v.size} values, the round's vector has {spec.dim}")
    if not np.isfinite(v).all():
        raise NonFiniteError(f"update has a non-finite value at index {int(np.flatnonzero(~np.isfinite(v))[0])}")
    norm = float(np.linalg.norm(v))
    if norm > spec.clip:
        v = v * (spec.clip / norm)
    r = conditional_round(v / spec.gamma, bound_sq=spec.sensitivity ** 2)
    dtype = np.uint32 if ring_bits == 32 else np.uint64
    out = r.astype(dtype)  # two's complement: wraps negatives into the ring
    add_discrete_gaussian(out, sigma=spec.sigma, key=noise_key)
    return out


def decode_sum(total: np.ndarray, spec: ClientDP) -> np.ndarray:
    """The unmasked ring sum as the (noisy) float64 sum of the clipped updates: centred, times ``gamma``."""
    signed = total.view(np.int32 if total.dtype == np.uint32 else np.int64)
    return signed.astype(np.float64) * spec.gamma
