"""Kernel dispatch: CUDA for device arrays, the C++ module for host arrays, the NumPy reference otherwise.

The bottom of medfl: it imports no protocol module, and the protocols call it. The choice is
made once per process (:mod:`~medfl.native.backend`); ``MEDFL_NATIVE=cuda|cpu|reference`` forces
it (see :mod:`medfl.envvars`). Every call checks dtype, shape, contiguity and device before it
reaches native code (:mod:`~medfl.native.checks`); host inputs that are not C-contiguous are
copied (the result is the same as the reference's), device inputs must be contiguous. Kernel
error codes become the typed errors of :mod:`medfl.errors`.

One module per kernel family: :mod:`~medfl.native.fixed_point` (the fixed-point codec and ring
sums), :mod:`~medfl.native.ring` (ring product), :mod:`~medfl.native.dcf` (DCF keys),
:mod:`~medfl.native.chacha20` and :mod:`~medfl.native.masking` (secagg),
:mod:`~medfl.native.noise` and :mod:`~medfl.native.clipping` (DP-SGD; torch, so not re-exported
here: import them by name). The references they match live in :mod:`medfl.native.reference`.
"""

from medfl.native.backend import active_backend, is_device_array, native_module
from medfl.native.chacha20 import chacha20_keystream, keystream
from medfl.native.dcf import dcf_eval, dcf_gen
from medfl.native.fixed_point import decode, encode, max_abs_for, ring_add_, ring_sum
from medfl.native.masking import apply_masks, quantize_and_mask
from medfl.native.ring import ring_matmul

__all__ = [
    "active_backend",
    "apply_masks",
    "chacha20_keystream",
    "dcf_eval",
    "dcf_gen",
    "decode",
    "encode",
    "is_device_array",
    "keystream",
    "max_abs_for",
    "native_module",
    "quantize_and_mask",
    "ring_add_",
    "ring_matmul",
    "ring_sum",
]
