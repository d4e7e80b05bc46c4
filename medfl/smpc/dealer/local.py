"""The dealer (crypto provider): what the parties ask it for, its local twin, and the ReLU keys it makes.

The dealer learns nothing about inputs or the model: everything it makes is independent of
them. :class:`LocalDealer` draws all its randomness from :mod:`medfl.csprng` and serves the
in-process engine and tests; a networked dealer implements the same :class:`Dealer` interface.
Its bulk work (the keystreams, the triples' products ``A B``, the DCF keys of the comparisons)
runs on the host or on a GPU (:mod:`medfl.smpc.dealer.generator`); the material is the same NumPy
arrays either way, and the same bits for the same CSPRNG keys.

References
----------
.. [1] Beaver, "Efficient Multiparty Protocols Using Circuit Randomization", CRYPTO 1991.
.. [2] Escudero et al., "Improved Primitives for MPC over Mixed Arithmetic-Binary Circuits",
   CRYPTO 2020 (truncation pairs with the top bit of the mask).
.. [3] Boyle et al., "Function Secret Sharing for Mixed-Mode and Fixed-Point Secure
   Computation", EUROCRYPT 2021 (the ReLU keys).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from medfl.smpc.dealer.generator import Generator, HostGenerator, generator_for
from medfl.smpc.dealer.triples import MatmulTriple, TruncPair
from medfl.smpc.device import SmpcDevice
from medfl.smpc.fss.comparison import RING_BITS, ReluKeys
from medfl.smpc.ring import Shared, share

__all__ = ["Dealer", "LocalDealer", "relu_keys"]


def relu_keys(n: int, *, bits: int = RING_BITS, generator: Generator | None = None) -> ReluKeys:
    """Generate the dealer material for ``n`` ReLUs of raw inputs in ``[-2^(bits-1), 2^(bits-1))``.

    Parameters
    ----------
    n : int
        Number of elements.
    bits : int
        Planned input range in bits, 2..64 (64: every signed 64-bit value).
    generator : Generator, optional
        Where the randomness and the DCF keys are made (:mod:`medfl.smpc.dealer.generator`; the
        host when omitted). The same CSPRNG keys give the same material on every generator.

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


class Dealer(Protocol):
    """What the compute parties ask the dealer for."""

    def weight_mask(self, shape: tuple[int, int]) -> Shared:
        """Return shares of a fresh mask ``B`` for a weight matrix, used for a whole session."""
        ...

    def matmul_triple(self, m: int, b: Shared) -> MatmulTriple:
        """Return a fresh ``A`` (m x k) with ``C = A @ B`` for the session's weight mask ``b``."""
        ...

    def trunc_pair(self, shape: tuple[int, ...], frac_bits: int) -> TruncPair:
        """Return a truncation pair for arrays of ``shape``."""
        ...

    def relu_keys(self, n: int, *, bits: int = 64) -> ReluKeys:
        """Return FSS ReLU material for ``n`` elements of raw range ``[-2^(bits-1), 2^(bits-1))``."""
        ...

    def mul_triple(self, shape: tuple[int, ...]) -> tuple[Shared, Shared, Shared]:
        """Return shares of element-wise ``a``, ``b`` and ``a * b``."""
        ...


class LocalDealer:
    """In-process dealer; keeps the clear weight masks of the session it serves.

    Parameters
    ----------
    device : {"cpu", "cuda"} or SmpcDevice, optional
        Where the bulk material is generated (:func:`medfl.smpc.dealer.generator.generator_for`): by
        default where ``MEDFL_SMPC_DEVICE`` says, else the host. A session's ``device=`` does
        not move its dealer; give both the same device to have the dealer on the GPU too.

    References
    ----------
    .. [1] Beaver, CRYPTO 1991.
    """

    def __init__(self, *, device: str | SmpcDevice | None = None) -> None:
        """Start a session with no weight masks, generating on ``device``."""
        self._masks: dict[int, np.ndarray] = {}
        self.bytes_offline = 0
        self.generator: Generator = generator_for(device)

    def _count(self, *arrays: Shared) -> None:
        self.bytes_offline += sum(s.s0.nbytes + s.s1.nbytes for s in arrays)

    def _share(self, x: np.ndarray) -> Shared:
        return share(x, draw=self.generator.uniform)

    def weight_mask(self, shape: tuple[int, int]) -> Shared:
        """Return shares of a fresh uniform weight mask ``B``; see :class:`Dealer`."""
        b = self.generator.uniform(shape)
        shares = self._share(b)
        self._masks[id(shares)] = b
        self._count(shares)
        return shares

    def matmul_triple(self, m: int, b: Shared) -> MatmulTriple:
        """Return a matrix triple for the mask ``b`` issued by :meth:`weight_mask`."""
        clear_b = self._masks.get(id(b))
        if clear_b is None:
            raise KeyError("weight mask was not issued by this dealer session; ask weight_mask first")
        a, c = self.generator.random_product(m, clear_b)
        t = MatmulTriple(self._share(a), b, self._share(c))
        self._count(t.a, t.c)
        return t

    def trunc_pair(self, shape: tuple[int, ...], frac_bits: int) -> TruncPair:
        """Return a truncation pair; see :class:`TruncPair`."""
        r = self.generator.uniform(shape)
        low = (r & np.uint64(2**63 - 1)) >> np.uint64(frac_bits)
        msb = r >> np.uint64(63)
        p = TruncPair(self._share(r), self._share(low), self._share(msb), frac_bits)
        self._count(p.r, p.r_low_shifted, p.r_msb)
        return p

    def relu_keys(self, n: int, *, bits: int = 64) -> ReluKeys:
        """Return FSS ReLU material for ``n`` elements; see :func:`relu_keys`."""
        keys = relu_keys(n, bits=bits, generator=self.generator)
        self.bytes_offline += keys.nbytes
        return keys

    def mul_triple(self, shape: tuple[int, ...]) -> tuple[Shared, Shared, Shared]:
        """Return an element-wise Beaver triple; see :class:`Dealer`."""
        a, b = self.generator.uniform(shape), self.generator.uniform(shape)
        t = (self._share(a), self._share(b), self._share(a * b))
        self._count(*t)
        return t
