"""Secure aggregation (SecAgg / SecAgg+): the coordinator learns only the sum of the updates.

References
----------
.. [1] Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
   CCS 2017.
.. [2] Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020.
"""

from medfl.secagg.client import ClientStage, SecAggClient
from medfl.secagg.graph import default_degree, neighbourhoods
from medfl.secagg.keys import KeyPair, Scope
from medfl.secagg.masking import MaskSeed, dequantize_sum, quantize_and_mask, unmask_and_dequantize
from medfl.secagg.quantization import QuantSpec, choose_spec, clip_to_norm
from medfl.secagg.server import SecAggServer, ServerStage

__all__ = ["ClientStage", "KeyPair", "MaskSeed", "QuantSpec", "Scope", "SecAggClient", "SecAggServer", "ServerStage",
           "choose_spec", "clip_to_norm", "default_degree", "dequantize_sum", "neighbourhoods", "quantize_and_mask",
           "unmask_and_dequantize"]
