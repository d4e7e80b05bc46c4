"""Clipping and ring-size choice for secure aggregation: updates mapped into Z_2^k without wrap.

Each agent clips its update to an L2 norm bound ``clip_norm`` (so every coordinate has
``|x| <= clip_norm``), multiplies it by its aggregation weight ``w <= 1`` and encodes it with
unbiased stochastic rounding and ``frac_bits`` fractional bits (:mod:`medfl.native.fixed_point`). The
sum of ``n_agents`` such vectors cannot wrap in Z_2^k when
``n_agents * (clip_norm * 2^f + 1) < 2^(k-1)``; :func:`choose_spec` picks k = 32 when that holds
and k = 64 otherwise, logs the choice, and refuses parameters no ring can hold.

Compatibility: :class:`QuantSpec` travels in round messages as a dict of its fields; fields are
never removed, new fields are optional, meanings never change.

References
----------
.. [1] Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
   CCS 2017 (updates in Z_R, R chosen so the sum cannot wrap).
.. [2] Kairouz, Liu and Steinke, "The Distributed Discrete Gaussian Mechanism for Federated
   Learning with Secure Aggregation", ICML 2021 (clip, scale, stochastic rounding).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from medfl.errors import ConfigError, NonFiniteError

__all__ = ["DEFAULT_FRAC_BITS", "QuantSpec", "choose_spec", "clip_to_norm"]

log = logging.getLogger(__name__)
DEFAULT_FRAC_BITS = 24


@dataclass(frozen=True)
class QuantSpec:
    """How a round's updates are quantized.

    Attributes
    ----------
    ring_bits : int
        32 or 64: the ring Z_2^k.
    frac_bits : int
        Fractional bits of the fixed-point encoding.
    clip_norm : float
        L2 norm bound of each agent's (weighted) update; bounds every coordinate too.
    n_agents : int
        Most summands the ring must hold without wrapping.
    """

    ring_bits: int
    frac_bits: int
    clip_norm: float
    n_agents: int

    def __post_init__(self) -> None:
        """Check the spec cannot wrap (a spec from the wire is checked like a chosen one)."""
        if self.ring_bits not in (32, 64):
            raise ValueError(f"ring_bits must be 32 or 64, got {self.ring_bits}")
        if not 0 <= self.frac_bits <= self.ring_bits - 2:
            raise ValueError(f"frac_bits must be in [0, {self.ring_bits - 2}], got {self.frac_bits}")
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ValueError(f"clip_norm must be a finite number > 0, got {self.clip_norm}")
        if self.n_agents < 1:
            raise ValueError(f"n_agents must be >= 1, got {self.n_agents}")
        if not _fits(self.ring_bits, self.frac_bits, self.clip_norm, self.n_agents):
            problem = (f"{self.n_agents} agents x clip_norm {self.clip_norm} x 2^{self.frac_bits} can wrap a "
                       f"{self.ring_bits}-bit ring")
            raise ConfigError([("aggregation", problem)])

    @property
    def dtype(self) -> type[np.unsignedinteger[Any]]:
        """NumPy dtype of ring vectors (uint32 or uint64)."""
        return np.uint32 if self.ring_bits == 32 else np.uint64

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for the wire (see the module docstring's compatibility rules)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantSpec:
        """Inverse of :meth:`to_dict`; unknown keys are ignored, the spec is re-checked."""
        return cls(ring_bits=int(data["ring_bits"]), frac_bits=int(data["frac_bits"]),
                   clip_norm=float(data["clip_norm"]), n_agents=int(data["n_agents"]))


def _fits(ring_bits: int, frac_bits: int, clip_norm: float, n_agents: int) -> bool:
    per_agent = math.ceil(clip_norm * 2.0**frac_bits) + 1  # stochastic rounding can round up by one
    return n_agents * per_agent < 2 ** (ring_bits - 1)


def choose_spec(*, n_agents: int, clip_norm: float, frac_bits: int = DEFAULT_FRAC_BITS) -> QuantSpec:
    """Pick the smallest ring (32, else 64 bits) in which ``n_agents`` clipped updates sum exactly.

    Parameters
    ----------
    n_agents : int
        Number of agents whose updates are summed.
    clip_norm : float
        L2 bound of each agent's weighted update.
    frac_bits : int
        Fractional bits (precision 2^-f per coordinate).

    Returns
    -------
    QuantSpec
        The spec; the choice is logged.

    Raises
    ------
    ConfigError
        When even a 64-bit ring could wrap; the message says which parameter to lower.

    References
    ----------
    .. [1] Bonawitz et al., CCS 2017, section 4 (choice of R).
    """
    for bits in (32, 64):
        if frac_bits <= bits - 2 and _fits(bits, frac_bits, clip_norm, n_agents):
            spec = QuantSpec(ring_bits=bits, frac_bits=frac_bits, clip_norm=clip_norm, n_agents=n_agents)
            log.info("secure aggregation ring: Z_2^%d (n_agents=%d, clip_norm=%g, frac_bits=%d)", bits, n_agents,
                     clip_norm, frac_bits)
            return spec
    raise ConfigError([("aggregation.clip_norm", f"{n_agents} agents x clip_norm {clip_norm} x 2^{frac_bits} do not "
                                                 "fit a 64-bit ring; lower clip_norm or the fractional bits")])


def clip_to_norm(update: np.ndarray, clip_norm: float) -> tuple[np.ndarray, float]:
    """Scale ``update`` (float32) so its L2 norm is at most ``clip_norm``.

    Parameters
    ----------
    update : ndarray of float32
        The flat update.
    clip_norm : float
        Bound.

    Returns
    -------
    (ndarray of float32, float)
        The clipped update (a new array) and the norm before clipping.

    Raises
    ------
    NonFiniteError
        The update holds NaN or infinity (it would poison the aggregate).
    """
    x = np.asarray(update, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(x.astype(np.float64)))
    if not math.isfinite(norm):
        bad = int(np.flatnonzero(~np.isfinite(x))[0])
        raise NonFiniteError(f"update element {bad} is {x[bad]}; a non-finite update cannot be aggregated")
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    out = (x * np.float32(scale)).astype(np.float32)
    # float32 rounding may leave the norm a hair above the bound; shrink until it is within.
    while float(np.linalg.norm(out.astype(np.float64))) > clip_norm:
        out = (out * np.float32(1 - 2**-20)).astype(np.float32)
    return out, norm
