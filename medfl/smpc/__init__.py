"""Encrypted inference: two-party computation over Z_2^64 with a dealer.

The parts, lowest first (each imports only the ones before it): :mod:`~medfl.smpc.ring` (ring
elements, fixed point, additive sharing), :mod:`~medfl.smpc.fss` (DCF keys and comparison key
material), :mod:`~medfl.smpc.device` (where the kernels run: host or CUDA),
:mod:`~medfl.smpc.dealer` (the dealer's items, its local twin, generator, material on the wire
and prefetch), :mod:`~medfl.smpc.engine` (openings, Beaver products, truncation, ReLU and the
layers), :mod:`~medfl.smpc.evaluator` (a torch model on the engine, both parties side by side in
one process: tests and benchmarks) and :mod:`~medfl.smpc.session` (over the network: one party's
run, the dealer service, the model server, the data owner and the session stages).

References
----------
.. [1] Beaver, "Efficient Multiparty Protocols Using Circuit Randomization", CRYPTO 1991.
.. [2] Escudero et al., "Improved Primitives for MPC over Mixed Arithmetic-Binary Circuits",
   CRYPTO 2020.
"""

from medfl.smpc.dealer import Dealer, LocalDealer, MatmulTriple, PrefetchDealer, TruncPair
from medfl.smpc.engine import Channel, InMemoryChannel, check_headroom, mask_weight, matmul, truncate
from medfl.smpc.ring import MaskedWeight, Shared, reconstruct, share

__all__ = ["Channel", "Dealer", "InMemoryChannel", "LocalDealer", "MaskedWeight", "MatmulTriple", "PrefetchDealer",
           "Shared", "TruncPair", "check_headroom", "mask_weight", "matmul", "reconstruct", "share", "truncate"]
