"""Secure matrix products with Beaver triples; the weight mask is opened once per session.

The model server's weights ``W`` are masked by a dealer matrix ``B`` and ``F = W - B`` is opened
once per model and session. Each query draws a fresh ``A`` with ``C = A B`` and opens only
``E = X - A``; then ``X W = E F + E B + A F + C`` is computed locally on shares. ``A F + C``
does not depend on the input, so each party computes its share of it as soon as the triple
arrives (:func:`~medfl.smpc.dealer.triples.offline_part`); a dealer that supplies triples ahead
of the query (see :mod:`medfl.smpc.dealer.prefetch`) hands them over with that part done, and
the online phase is one ring product per party.

References
----------
.. [1] Beaver, "Efficient Multiparty Protocols Using Circuit Randomization", CRYPTO 1991.
.. [2] Mohassel and Zhang, "SecureML", IEEE S&P 2017 (matrix triples, reusing the weight mask).
"""

from __future__ import annotations

from medfl.smpc.dealer import Dealer, offline_part
from medfl.smpc.device import HostDevice, SmpcDevice
from medfl.smpc.engine.channel import Channel
from medfl.smpc.ring import MaskedWeight, Shared

__all__ = ["mask_weight", "matmul"]


def mask_weight(w: Shared, dealer: Dealer, channel: Channel) -> MaskedWeight:
    """Open ``W - B`` once for the session (one round, paid per model, not per query).

    References
    ----------
    .. [1] Mohassel and Zhang, "SecureML", S&P 2017.
    """
    if w.s0.ndim != 2:
        raise ValueError(f"weight must be a matrix, got shape {w.s0.shape}")
    b = dealer.weight_mask((int(w.s0.shape[0]), int(w.s0.shape[1])))
    return MaskedWeight(w, b, channel.open(w.s0 - b.s0, w.s1 - b.s1))


def matmul(x: Shared, w: MaskedWeight, dealer: Dealer, channel: Channel, device: SmpcDevice | None = None,
           ) -> Shared:
    """Return shares of ``X @ W mod 2^64`` in one round (opening ``X - A`` only).

    Parameters
    ----------
    x : Shared
        Shares of an (m x k) matrix.
    w : MaskedWeight
        The session's masked (k x n) weight.
    dealer, channel
        Source of the triple and the opening.
    device : SmpcDevice, optional
        Where the ring products run (the host when omitted); the bits are the same.

    Returns
    -------
    Shared

    References
    ----------
    .. [1] Beaver, CRYPTO 1991.
    """
    if x.s0.ndim != 2 or x.s0.shape[1] != w.f.shape[0]:
        raise ValueError(f"cannot multiply {x.s0.shape} by {w.f.shape}")
    dev = device or HostDevice()
    prepared = getattr(dealer, "prepared_triple", None)
    if prepared is not None:  # a prefetching dealer: the triple came with A_p F + C_p done offline
        t, base = prepared(int(x.s0.shape[0]), w)
    else:
        t = dealer.matmul_triple(int(x.s0.shape[0]), w.b)
        base = offline_part(t, w, dev)
    e = channel.open(x.s0 - t.a.s0, x.s1 - t.a.s1)
    # party 0: E (F + B0) + [A0 F + C0]; party 1: E B1 + [A1 F + C1] (one online ring product each)
    p0, p1 = dev.online_products(e, w, t.b)
    return Shared(base.s0 + p0, base.s1 + p1)
