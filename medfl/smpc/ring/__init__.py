"""The ring Z_2^64: uniform elements, fixed point, ring products and two-party additive sharing."""

from medfl.smpc.ring.elements import FRAC_BITS, RING_BITS, decode, encode, matmul, uniform
from medfl.smpc.ring.sharing import MaskedWeight, Shared, reconstruct, share

__all__ = ["FRAC_BITS", "RING_BITS", "MaskedWeight", "Shared", "decode", "encode", "matmul", "reconstruct", "share",
           "uniform"]
