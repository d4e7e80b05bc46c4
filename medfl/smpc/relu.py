"""ReLU on shares in one round: one opening of a masked value and one DCF with a two-word payload.

The dealer draws a uniform mask ``r = r_msb 2^63 + r'`` and a DCF on 63-bit inputs with
threshold ``r'`` and payload ``(1 - 2 r_msb, r (1 - 2 r_msb))``, plus shares of ``r``, ``r_msb``
and ``r r_msb``. The parties open ``c = x + r`` (uniform, so it reveals nothing); with
``c = c_msb 2^63 + c'`` the sign bit of ``x = c - r`` is ``c_msb xor r_msb xor [c' < r']`` (the
borrow out of the low 63 bits). The DCF gives shares of ``w1 = (1 - 2 r_msb) [c' < r']`` and
``w2 = r w1``, so ``u = r_msb xor [c' < r'] = r_msb + w1``, ``msb = c_msb + (1 - 2 c_msb) u``
and ``r u = r r_msb + w2`` are linear in shares. With ``b = 1 - msb = [x >= 0]``,
``ReLU(x) = x b = c b - r b`` where ``r b = r - c_msb r - (1 - 2 c_msb) r u``: everything after
the opening is local. The result is exact for every signed 64-bit ``x``.

With a range plan (``|x| < 2^(l-1)`` for the raw values, from calibration) the same holds with
bit ``l - 1`` in place of bit 63 and a DCF on ``l - 1`` bits, since the sign of ``x`` is the top
bit of ``x mod 2^l``; the opened ``c`` stays a uniform 64-bit value and the output stays exact,
but the DCF costs ``l - 1`` levels instead of 63. Outside the planned range the sign is wrong,
so the evaluator refuses inputs outside the calibrated range before sharing.

References
----------
.. [1] Boyle et al., "Function Secret Sharing for Mixed-Mode and Fixed-Point Secure
   Computation", EUROCRYPT 2021 (sign bits from a DCF on the low bits of a masked value).
.. [2] Ryffel et al., "AriaNN: Low-Interaction Privacy-Preserving Deep Learning via Function
   Secret Sharing", PoPETs 2022.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from medfl.smpc import ring
from medfl.smpc.channel import Channel
from medfl.smpc.fss import DcfKey, dcf_eval
from medfl.smpc.generator import Generator, HostGenerator
from medfl.smpc.sharing import Shared, share

if TYPE_CHECKING:
    from medfl.smpc.device import SmpcDevice

__all__ = ["ACT_MARGIN", "RING_BITS", "ReluKeys", "comparison_bits", "negative_bits", "relu", "relu_keys"]

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


def relu_keys(n: int, *, bits: int = RING_BITS, generator: Generator | None = None) -> ReluKeys:
    """Generate the dealer material for ``n`` ReLUs of raw inputs in ``[-2^(bits-1), 2^(bits-1))``.

    Parameters
    ----------
    n : int
        Number of elements.
    bits : int
        Planned input range in bits, 2..64 (64: every signed 64-bit value).
    generator : Generator, optional
        Where the randomness and the DCF keys are made (:mod:`medfl.smpc.generator`; the host
        when omitted). The same CSPRNG keys give the same material on every generator.

    References
    ----------
    .. [1] Boyle et al., EUROCRYPT 2021.
    """
    if not isinstance(bits, int) or not 2 <= bits <= RING_BITS:
        raise ValueError(f"bits must be an integer in [2, 64], got {bits!r}")
    gen = generator if generator is not None else HostGenerator()
    r = gen.uniform((n,))
    msb = (r >> np.uint64(bits - 1)) & np.uint64(1)
    sign = np.uint64(1) - np.uint64(2) * msb  # 1 - 2 r_msb in the ring
    beta = np.stack([sign, r * sign], axis=1)
    low = r & np.uint64(2 ** (bits - 1) - 1)
    draw = gen.uniform
    return ReluKeys(share(r, draw=draw), share(msb, draw=draw), share(r * msb, draw=draw),
                    gen.dcf_gen(low, beta, bits=bits - 1))


def relu(x: Shared, keys: ReluKeys, channel: Channel, *, device: SmpcDevice | None = None) -> Shared:
    """Return shares of ``max(x, 0)`` in one round, exact for raw ``x`` in the keys' planned range.

    ``device`` evaluates the DCF keys (:mod:`medfl.smpc.device`; the host when omitted).

    References
    ----------
    .. [1] Boyle et al., EUROCRYPT 2021; Ryffel et al., PoPETs 2022.
    """
    shape = x.s0.shape
    x0, x1 = x.s0.reshape(-1), x.s1.reshape(-1)
    if x0.size != keys.r.s0.size:
        raise ValueError(f"ReLU keys for {keys.r.s0.size} elements, got {x0.size}")
    c = channel.open(x0 + keys.r.s0, x1 + keys.r.s1)
    top = np.uint64(keys.bits - 1)
    c_msb = (c >> top) & np.uint64(1)
    flip = np.uint64(1) - np.uint64(2) * c_msb  # 1 - 2 c_msb
    c_low = c & np.uint64(2 ** (keys.bits - 1) - 1)
    out = []
    if device is None:
        ws = (dcf_eval(0, keys.dcf[0], c_low), dcf_eval(1, keys.dcf[1], c_low))
    else:
        ws = device.dcf_eval_pair(keys.dcf, c_low)
    for p in (0, 1):
        w = ws[p]
        u = keys.r_msb.of(p) + w[:, 0]
        ru = keys.r_r_msb.of(p) + w[:, 1]
        msb = flip * u + (c_msb if p == 0 else np.uint64(0))
        b = (np.uint64(1) if p == 0 else np.uint64(0)) - msb
        rb = keys.r.of(p) - c_msb * keys.r.of(p) - flip * ru
        out.append((c * b - rb).reshape(shape))
    return Shared(out[0], out[1])


def negative_bits(c: np.ndarray, keys: ReluKeys, party: int, rows: np.ndarray, *,
                  device: SmpcDevice | None = None) -> np.ndarray:
    """One party's arithmetic share of ``[c_i - r_{rows_i} < 0]`` for opened points ``c`` (no round).

    Point ``i`` uses the material of element ``rows[i]`` (``c = x + r`` opened once, then shifted by
    public constants, e.g. ``c - t`` to compare ``x`` with several thresholds ``t``); evaluating one
    DCF key at several public points is local and reveals nothing more. Exact while
    ``|c_i - r| < 2^(bits-1)`` in the signed sense. ``device`` evaluates the DCF (the host when omitted).

    References
    ----------
    .. [1] Boyle et al., EUROCRYPT 2021.
    """
    top = np.uint64(keys.bits - 1)
    c_msb = (c >> top) & np.uint64(1)
    k = keys.dcf[party]
    key = DcfKey(k.seed[rows], k.s_cw[rows], k.v_cw[rows], k.t_cw[rows], k.final[rows])
    low = c & np.uint64(2 ** (keys.bits - 1) - 1)
    w = dcf_eval(party, key, low) if device is None else device.dcf_eval(party, key, low)
    u = keys.r_msb.of(party)[rows] + w[:, 0]
    return (np.uint64(1) - np.uint64(2) * c_msb) * u + (c_msb if party == 0 else np.uint64(0))


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
