"""Encrypted inference: two-party computation over Z_2^64 with a dealer.

References
----------
.. [1] Beaver, "Efficient Multiparty Protocols Using Circuit Randomization", CRYPTO 1991.
.. [2] Escudero et al., "Improved Primitives for MPC over Mixed Arithmetic-Binary Circuits",
   CRYPTO 2020.
"""

from medfl.smpc.beaver import MaskedWeight, mask_weight, matmul
from medfl.smpc.channel import Channel, InMemoryChannel
from medfl.smpc.dealer import Dealer, LocalDealer, MatmulTriple, TruncPair
from medfl.smpc.prefetch import PrefetchDealer
from medfl.smpc.sharing import Shared, reconstruct, share
from medfl.smpc.truncation import check_headroom, truncate

__all__ = ["Channel", "Dealer", "InMemoryChannel", "LocalDealer", "MaskedWeight", "MatmulTriple", "PrefetchDealer",
           "Shared", "TruncPair", "check_headroom", "mask_weight", "matmul", "reconstruct", "share", "truncate"]
