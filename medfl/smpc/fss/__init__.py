"""Function secret sharing: DCF keys and the key material of secure comparisons."""

from medfl.smpc.fss.comparison import ACT_MARGIN, ReluKeys, comparison_bits
from medfl.smpc.fss.dcf import BITS, DcfKey, dcf_eval, dcf_gen, dcf_inputs

__all__ = ["ACT_MARGIN", "BITS", "DcfKey", "ReluKeys", "comparison_bits", "dcf_eval", "dcf_gen", "dcf_inputs"]
