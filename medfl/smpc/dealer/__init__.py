"""The dealer: its items and interface, the local dealer, where it generates, its material on the wire, prefetch."""

from medfl.smpc.dealer.generator import CudaGenerator, Generator, HostGenerator, generator_for
from medfl.smpc.dealer.local import Dealer, LocalDealer, relu_keys
from medfl.smpc.dealer.material import (
    KINDS,
    MAX_PLAN_ELEMENTS,
    Opener,
    PlanEntry,
    Sealer,
    generate,
    pack_items,
    plan_from_wire,
    plan_to_wire,
    unpack_items,
)
from medfl.smpc.dealer.prefetch import PrefetchDealer
from medfl.smpc.dealer.triples import MatmulTriple, TruncPair, offline_part

__all__ = ["KINDS", "MAX_PLAN_ELEMENTS", "CudaGenerator", "Dealer", "Generator", "HostGenerator", "LocalDealer",
           "MatmulTriple", "Opener", "PlanEntry", "PrefetchDealer", "Sealer", "TruncPair", "generate", "generator_for",
           "offline_part", "pack_items", "plan_from_wire", "plan_to_wire", "relu_keys", "unpack_items"]
