"""The NumPy/torch references of every native kernel: the definitions the C++ and CUDA kernels match.

One module per topic: :mod:`~medfl.native.reference.fixed_point` (encode/decode, ring sums and
product), :mod:`~medfl.native.reference.dcf` (DCF keys), :mod:`~medfl.native.reference.masking`
(ChaCha20 keystream, secagg masks), :mod:`~medfl.native.reference.noise` (DP noise) and
:mod:`~medfl.native.reference.clipping` (per-sample clipping; torch, so not re-exported here:
import it by name). They depend on NumPy, ``cryptography``, :mod:`medfl.csprng` and
:mod:`medfl.native.checks` only.
"""

from medfl.native.reference.dcf import dcf_eval_reference, dcf_gen_reference
from medfl.native.reference.fixed_point import (
    decode_reference,
    encode_reference,
    ring_add_reference,
    ring_matmul_reference,
    ring_sum_reference,
    uniforms_reference,
)
from medfl.native.reference.masking import (
    apply_masks_reference,
    chacha20_keystream_reference,
    keystream_words_reference,
    quantize_and_mask_reference,
    unmask_and_dequantize_reference,
)
from medfl.native.reference.noise import secure_normal_reference

__all__ = [
    "apply_masks_reference",
    "chacha20_keystream_reference",
    "dcf_eval_reference",
    "dcf_gen_reference",
    "decode_reference",
    "encode_reference",
    "keystream_words_reference",
    "quantize_and_mask_reference",
    "ring_add_reference",
    "ring_matmul_reference",
    "ring_sum_reference",
    "secure_normal_reference",
    "uniforms_reference",
    "unmask_and_dequantize_reference",
]
