"""The key material of one secure comparison (ReLU, max-pool, GroupNorm): a masked sign bit and its DCF.

The dealer draws a uniform mask ``r = r_msb 2^63 + r'`` and a DCF on 63-bit inputs with
threshold ``r'`` and payload ``(1 - 2 r_msb, r (1 - 2 r_msb))``, plus shares of ``r``, ``r_msb``
and ``r r_msb`` (:func:`medfl.smpc.dealer.local.relu_keys`); the parties open ``x + r`` once and
evaluate the DCF at its low bits (:mod:`medfl.smpc.engine.relu`). With a range plan
(``|x| < 2^(l-1)`` for the raw values, from calibration) bit ``l - 1`` takes the place of bit 63
and the DCF covers ``l - 1`` bits (:func:`comparison_bits`).

Compatibility: a key's layout is its fields below; the planned range follows from the DCF's
``bits``.

References
----------
.. [1] Boyle et al., "Function Secret Sharing for Mixed-Mode and Fixed-Point Secure
   Computation", EUROCRYPT 2021 (sign bits from a DCF on the low bits of a masked value).
.. [2] Ryffel et al., "AriaNN: Low-Interaction Privacy-Preserving Deep Learning via Function
   Secret Sharing", PoPETs 2022.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medfl.smpc import ring
from medfl.smpc.fss.dcf import DcfKey
from medfl.smpc.ring import Shared

__all__ = ["ACT_MARGIN", "RING_BITS", "ReluKeys", "comparison_bits"]

RING_BITS = 64
ACT_MARGIN = 64.0
"""Planned comparison input range: this many times the largest calibrated ``|input|``."""


@dataclass(frozen=True)
class ReluKeys:
    """Dealer material for one ReLU over ``N`` elements.

    Attributes
    ----------
    r : Shared
        The mask of the opened value.
    r_msb : Shared
        Its top bit.
    r_r_msb : Shared
        ``r * r_msb``.
    dcf : (DcfKey, DcfKey)
        Keys of ``x' -> (1 - 2 r_msb, r (1 - 2 r_msb)) [x' < r mod 2^(l-1)]`` on ``l - 1``-bit inputs,
        where ``r_msb`` is bit ``l - 1`` of ``r`` and ``l`` is :attr:`bits`.

    References
    ----------
    .. [1] Boyle et al., EUROCRYPT 2021.
    """

    r: Shared
    r_msb: Shared
    r_r_msb: Shared
    dcf: tuple[DcfKey, DcfKey]

    @property
    def bits(self) -> int:
        """Planned input range: exact for raw ``x`` in ``[-2^(bits-1), 2^(bits-1))``."""
        return self.dcf[0].bits + 1

    @property
    def nbytes(self) -> int:
        """Bytes the dealer sends (both parties together)."""
        shared = (self.r, self.r_msb, self.r_r_msb)
        return sum(s.s0.nbytes + s.s1.nbytes for s in shared) + sum(k.nbytes for k in self.dcf)


def comparison_bits(bound: float | None, frac_bits: int = ring.FRAC_BITS) -> int:
    """Bits a comparison's DCF covers for inputs up to ``bound`` (64 when there is no plan).

    ``ceil(log2(ACT_MARGIN * bound * 2^frac_bits))`` magnitude bits, one sign bit, and one bit
    because a max pool compares differences of two such values.

    References
    ----------
    .. [1] Boyle et al., "Function Secret Sharing for Mixed-Mode and Fixed-Point Secure
       Computation", EUROCRYPT 2021.
    """
    if bound is None or not np.isfinite(bound):
        return RING_BITS
    raw = max(ACT_MARGIN * bound * 2.0**frac_bits, 1.0)
    return int(min(RING_BITS, max(2, int(np.ceil(np.log2(raw))) + 2)))
