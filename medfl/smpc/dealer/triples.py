"""The dealer's items for products and truncations: matrix triples, truncation pairs, a triple's offline part.

A matrix triple ``(A, B, C = A B)`` is drawn against the session's weight mask ``B``; the part
of a Beaver product that does not depend on the input, ``A_p F + C_p``, is computed as soon as
the triple arrives (:func:`offline_part`), by the online engine
(:func:`medfl.smpc.engine.beaver.matmul`) or ahead of the query by
:class:`~medfl.smpc.dealer.prefetch.PrefetchDealer`.

References
----------
.. [1] Beaver, "Efficient Multiparty Protocols Using Circuit Randomization", CRYPTO 1991.
.. [2] Mohassel and Zhang, "SecureML", IEEE S&P 2017 (matrix triples, reusing the weight mask).
.. [3] Escudero et al., "Improved Primitives for MPC over Mixed Arithmetic-Binary Circuits",
   CRYPTO 2020 (truncation pairs with the top bit of the mask).
"""

from __future__ import annotations

from dataclasses import dataclass

from medfl.smpc.device import HostDevice, SmpcDevice
from medfl.smpc.ring import MaskedWeight, Shared

__all__ = ["MatmulTriple", "TruncPair", "offline_part"]


@dataclass(frozen=True)
class MatmulTriple:
    """Shares of ``A`` (m x k), ``B`` (k x n) and ``C = A @ B mod 2^64``.

    References
    ----------
    .. [1] Beaver, CRYPTO 1991; Mohassel and Zhang, "SecureML", S&P 2017 (matrix triples).
    """

    a: Shared
    b: Shared
    c: Shared


@dataclass(frozen=True)
class TruncPair:
    """Shares of a uniform mask ``r``, of ``r mod 2^63 >> f`` and of the top bit of ``r``.

    References
    ----------
    .. [1] Escudero et al., CRYPTO 2020.
    """

    r: Shared
    r_low_shifted: Shared
    r_msb: Shared
    frac_bits: int


def offline_part(t: MatmulTriple, w: MaskedWeight, device: SmpcDevice | None = None) -> Shared:
    """Each party's input-independent share of the product: ``A_p F + C_p``.

    ``device`` runs the products (the host when omitted, see :mod:`medfl.smpc.device`).

    References
    ----------
    .. [1] Mohassel and Zhang, "SecureML", S&P 2017 (offline/online split).
    """
    p0, p1 = (device or HostDevice()).offline_products(t.a, w)
    return Shared(t.c.s0 + p0, t.c.s1 + p1)
