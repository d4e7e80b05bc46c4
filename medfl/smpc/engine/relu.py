"""ReLU on shares in one round: one opening of a masked value and one DCF with a two-word payload.

The dealer draws a uniform mask ``r = r_msb 2^63 + r'`` and a DCF on 63-bit inputs with
threshold ``r'`` and payload ``(1 - 2 r_msb, r (1 - 2 r_msb))``, plus shares of ``r``, ``r_msb``
and ``r r_msb`` (:class:`~medfl.smpc.fss.comparison.ReluKeys`, made by
:func:`medfl.smpc.dealer.local.relu_keys`). The parties open ``c = x + r`` (uniform, so it reveals nothing); with
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

import numpy as np

from medfl.smpc.device import SmpcDevice
from medfl.smpc.engine.channel import Channel
from medfl.smpc.fss import DcfKey, ReluKeys, dcf_eval
from medfl.smpc.ring import Shared

__all__ = ["negative_bits", "relu"]


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
