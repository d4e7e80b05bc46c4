"""ReLU on shares: the sign from two DCF evaluations on one opened masked value, then a Beaver product.

Round 1 opens ``c = x + 2^62 + r`` (uniform). With ``q = r + 2^62 mod 2^64`` the dealer's DCF
keys give shares of ``[c < q] - [c < r] + [q < r] = [x < 0]`` for ``|x| < 2^62``; round 2
multiplies ``x`` by ``1 - [x < 0]`` with an element-wise Beaver triple. The result is exact.

References
----------
.. [1] Boyle et al., "Function Secret Sharing for Mixed-Mode and Fixed-Point Secure
   Computation", EUROCRYPT 2021 (interval containment from DCFs).
.. [2] Ryffel et al., "AriaNN", PoPETs 2022.
.. [3] Beaver, CRYPTO 1991.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medfl.smpc import ring
from medfl.smpc.channel import Channel
from medfl.smpc.fss import DcfKey, dcf_eval, dcf_gen
from medfl.smpc.sharing import Shared, share

__all__ = ["ReluKeys", "relu", "relu_keys"]

_T = np.uint64(2**62)


@dataclass(frozen=True)
class ReluKeys:
    """Dealer material for one ReLU over ``N`` elements: mask, two DCF keys per party, a triple.

    References
    ----------
    .. [1] Boyle et al., EUROCRYPT 2021.
    """

    r: Shared
    dcf_q: tuple[DcfKey, DcfKey]
    dcf_r: tuple[DcfKey, DcfKey]
    wrap: Shared
    a: Shared
    b: Shared
    c: Shared

    @property
    def nbytes(self) -> int:
        """Bytes the dealer sends (both parties together)."""
        shared = (self.r, self.wrap, self.a, self.b, self.c)
        return sum(s.s0.nbytes + s.s1.nbytes for s in shared) + sum(
            k.nbytes for k in (*self.dcf_q, *self.dcf_r))


def relu_keys(n: int) -> ReluKeys:
    """Generate the dealer material for ``n`` ReLUs.

    References
    ----------
    .. [1] Boyle et al., EUROCRYPT 2021.
    """
    r = ring.uniform((n,))
    q = r + _T
    one = np.ones(n, np.uint64)
    a, b = ring.uniform((n,)), ring.uniform((n,))
    return ReluKeys(share(r), dcf_gen(q, one), dcf_gen(r, one), share((q < r).astype(np.uint64)),
                    share(a), share(b), share(a * b))


def relu(x: Shared, keys: ReluKeys, channel: Channel) -> Shared:
    """Return shares of ``max(x, 0)`` for signed ``|x| < 2^62``, in two rounds.

    References
    ----------
    .. [1] Boyle et al., EUROCRYPT 2021; Ryffel et al., PoPETs 2022.
    """
    shape = x.s0.shape
    x0, x1 = x.s0.reshape(-1), x.s1.reshape(-1)
    if x0.size != keys.r.s0.size:
        raise ValueError(f"ReLU keys for {keys.r.s0.size} elements, got {x0.size}")
    c = channel.open(x0 + _T + keys.r.s0, x1 + keys.r.s1)
    pos = []
    for p in (0, 1):
        neg = dcf_eval(p, keys.dcf_q[p], c) - dcf_eval(p, keys.dcf_r[p], c) + keys.wrap.of(p)
        pos.append((np.uint64(1) if p == 0 else np.uint64(0)) - neg)
    xs, ss = (x0, x1), pos
    n = x0.size
    opened = channel.open(np.concatenate([xs[0] - keys.a.s0, ss[0] - keys.b.s0]),
                          np.concatenate([xs[1] - keys.a.s1, ss[1] - keys.b.s1]))
    d, e = opened[:n], opened[n:]
    z = [e * keys.a.of(p) + d * keys.b.of(p) + keys.c.of(p) for p in (0, 1)]
    z[0] = z[0] + d * e
    return Shared(z[0].reshape(shape), z[1].reshape(shape))
