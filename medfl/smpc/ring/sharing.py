"""Two-party additive secret sharing over Z_2^64: ``x = x0 + x1 mod 2^64``, and masked weights.

Each share alone is uniform in Z_2^64 and so carries no information about ``x``. A
:class:`MaskedWeight` is a shared weight matrix with its mask and the opened masked value, as
the Beaver products of :mod:`medfl.smpc.engine.beaver` and the devices of
:mod:`medfl.smpc.device` use it.

References
----------
.. [1] Demmler, Schneider and Zohner, "ABY - A Framework for Efficient Mixed-Protocol Secure
   Two-Party Computation", NDSS 2015 (arithmetic sharing).
.. [2] Mohassel and Zhang, "SecureML", IEEE S&P 2017 (matrix triples, reusing the weight mask).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from medfl.smpc.ring import elements as ring

__all__ = ["MaskedWeight", "Shared", "reconstruct", "share"]


@dataclass(frozen=True)
class Shared:
    """The two additive shares of one secret ring array (held together only in tests and by the dealer).

    Attributes
    ----------
    s0, s1 : ndarray of uint64
        Party 0's and party 1's shares, same shape.

    References
    ----------
    .. [1] Demmler, Schneider and Zohner, "ABY", NDSS 2015.
    """

    s0: np.ndarray
    s1: np.ndarray

    def __post_init__(self) -> None:
        """Check that both shares are uint64 arrays of one shape."""
        if self.s0.dtype != np.uint64 or self.s1.dtype != np.uint64:
            raise TypeError(f"shares must be uint64, got {self.s0.dtype} and {self.s1.dtype}")
        if self.s0.shape != self.s1.shape:
            raise ValueError(f"shares differ in shape: {self.s0.shape} vs {self.s1.shape}")

    def of(self, party: int) -> np.ndarray:
        """Return the share of ``party`` (0 or 1)."""
        if party not in (0, 1):
            raise ValueError(f"party must be 0 or 1, got {party}")
        return self.s0 if party == 0 else self.s1


@dataclass(frozen=True)
class MaskedWeight:
    """A shared weight matrix with its opened masked value ``F = W - B`` and the mask ``B``.

    References
    ----------
    .. [1] Mohassel and Zhang, "SecureML", S&P 2017.
    """

    w: Shared
    b: Shared
    f: np.ndarray


def share(x: np.ndarray, *, draw: Callable[[tuple[int, ...]], np.ndarray] | None = None) -> Shared:
    """Split ring elements into two uniformly random additive shares.

    Parameters
    ----------
    x : ndarray of uint64
        The secret.
    draw : callable, optional
        Where party 0's uniform share comes from (:func:`medfl.smpc.ring.elements.uniform`, or a dealer
        device's draw of the same stream, see :mod:`medfl.smpc.dealer.generator`).

    Returns
    -------
    Shared

    References
    ----------
    .. [1] Demmler, Schneider and Zohner, "ABY", NDSS 2015.
    """
    x = np.asarray(x)
    if x.dtype != np.uint64:
        raise TypeError(f"secret must be uint64 ring elements, got {x.dtype}")
    s0 = (draw or ring.uniform)(x.shape)
    return Shared(s0, x - s0)


def reconstruct(s: Shared) -> np.ndarray:
    """Return ``s0 + s1 mod 2^64``."""
    return s.s0 + s.s1
