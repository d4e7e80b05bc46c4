"""Argument checks made before any kernel call, and the kernels' status codes as typed errors.

Host inputs that are not C-contiguous are copied here (the result is the same as the
reference's); everything else that a kernel could not take is refused with the value seen and
the fix.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from medfl.errors import NonFiniteError, RingOverflowError

__all__ = ["BLOCK_BYTES", "KEY_BYTES", "MAX_COUNTER", "NONCE_BYTES", "c_order", "check_add", "check_bits",
           "check_chacha20", "check_rounding", "dcf_points", "host_float32", "host_ring", "raise_for_status",
           "ring_bits_of", "ring_operands", "u64"]

KEY_BYTES = 32
NONCE_BYTES = 12
BLOCK_BYTES = 64
MAX_COUNTER = 2**32 - 1


def check_bits(frac_bits: int, ring_bits: int) -> None:
    """Refuse fixed-point parameters outside ``ring_bits in {32, 64}``, ``0 <= frac_bits <= ring_bits - 2``."""
    for name, value in (("frac_bits", frac_bits), ("ring_bits", ring_bits)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if ring_bits not in (32, 64):
        raise ValueError(f"ring_bits must be 32 or 64, got {ring_bits}")
    if not 0 <= frac_bits <= ring_bits - 2:
        raise ValueError(f"frac_bits must be in [0, {ring_bits - 2}] for a {ring_bits}-bit ring, got {frac_bits}")


def raise_for_status(code: int, index: int, x: Any, frac_bits: int, ring_bits: int) -> None:
    """Turn a kernel's ``(code, index)`` into the typed error, naming the value seen and the fix.

    Parameters
    ----------
    code : int
        0 (ok), 1 (non-finite) or 2 (overflow), as returned by the kernels.
    index : int
        First offending flat index.
    x : ndarray
        The encoded input (host copy), to report the value.
    frac_bits, ring_bits : int
        The encoding parameters, to report the limit.
    """
    if code == 0:
        return
    flat = np.asarray(x).reshape(-1)
    value = float(flat[index]) if 0 <= index < flat.size else float("nan")
    if code == 1:
        raise NonFiniteError(f"cannot encode non-finite value {value} at flat index {index}; "
                             "clip or drop NaN/inf before encoding")
    if code != 2:
        raise ValueError(f"unknown kernel status code {code} (index {index})")
    limit = 2.0 ** (ring_bits - 1 - frac_bits)
    raise RingOverflowError(f"value {value!r} at flat index {index} does not fit a {ring_bits}-bit ring with "
                            f"{frac_bits} fractional bits (|x| must be below {limit}); clip the input, lower "
                            f"frac_bits or use ring_bits=64")


def ring_bits_of(v: Any) -> int:
    """32 or 64 for a uint32 / uint64 array; TypeError otherwise."""
    dtype = getattr(v, "dtype", None)
    if dtype == np.uint32:
        return 32
    if dtype == np.uint64:
        return 64
    raise TypeError(f"ring arrays must be uint32 or uint64, got {dtype if dtype is not None else type(v).__name__}")


def check_rounding(rounding: str) -> bool:
    """True for ``"stochastic"``, False for ``"nearest"``; ValueError otherwise."""
    if rounding not in ("nearest", "stochastic"):
        raise ValueError(f"rounding must be 'nearest' or 'stochastic', got {rounding!r}")
    return rounding == "stochastic"


def u64(value: Any, name: str) -> int:
    """``value`` as an integer modulo 2^64; TypeError for a non-integer."""
    try:
        return operator.index(value) % 2**64
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}") from None


def c_order(a: np.ndarray) -> np.ndarray:
    """``a`` itself if C-contiguous, else a C-ordered copy (keeps 0-d arrays 0-d)."""
    return a if a.flags.c_contiguous else a.copy(order="C")


def host_float32(x: Any) -> np.ndarray:
    """A C-ordered float32 NumPy array ``x``; TypeError for anything else."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a NumPy array (or a CUDA tensor / CuPy array), got {type(x).__name__}")
    if x.dtype != np.float32:
        raise TypeError(f"x must be float32, got {x.dtype}; convert with x.astype(np.float32)")
    return c_order(x)


def host_ring(v: Any, name: str) -> np.ndarray:
    """A C-ordered uint32 / uint64 NumPy array ``v``; TypeError for anything else."""
    if not isinstance(v, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(v).__name__}")
    if v.dtype not in (np.uint32, np.uint64):
        raise TypeError(f"{name} must be uint32 or uint64, got {v.dtype}")
    return c_order(v)


def check_add(acc: Any, v: Any) -> None:
    """Refuse a ``ring_add_`` whose ``acc`` is not a writable C-contiguous ring array or ``v`` does not match it."""
    if not isinstance(acc, np.ndarray) or not acc.flags.c_contiguous or not acc.flags.writeable:
        raise ValueError("acc must be a writable C-contiguous NumPy array (it is updated in place), got "
                         f"{type(acc).__name__} with flags {getattr(acc, 'flags', None)!s}".replace("\n", " "))
    host_ring(acc, "acc")
    if not isinstance(v, np.ndarray) or v.dtype != acc.dtype or v.size != acc.size:
        raise ValueError(f"v must be a NumPy array of dtype {acc.dtype} and size {acc.size}, got "
                         f"{getattr(v, 'dtype', type(v).__name__)} of size {getattr(v, 'size', '?')}")


def ring_operands(a: Any, b: Any, out: Any, accumulate: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check ``a`` (m, k) and ``b`` (k, n) uint64 host matrices; return them C-ordered and the output."""
    for name, v in (("a", a), ("b", b)):
        if not isinstance(v, np.ndarray) or v.dtype != np.uint64 or v.ndim != 2:
            raise TypeError(f"{name} must be a 2-D uint64 NumPy array (ring elements), got "
                            f"{type(v).__name__} {getattr(v, 'dtype', '')}{getattr(v, 'shape', '')}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"cannot multiply a {a.shape} by b {b.shape}: inner sizes differ")
    shape = (a.shape[0], b.shape[1])
    if out is None:
        if accumulate:
            raise ValueError("accumulate=True needs out (the matrix to add the product to)")
        out = np.empty(shape, np.uint64)
    elif (not isinstance(out, np.ndarray) or out.dtype != np.uint64 or out.shape != shape
          or not out.flags.c_contiguous or not out.flags.writeable):
        raise ValueError(f"out must be a writable C-contiguous uint64 array of shape {shape}, got "
                         f"{getattr(out, 'dtype', type(out).__name__)}{getattr(out, 'shape', '')}")
    return c_order(a), c_order(b), out


def dcf_points(party: int, key: Any, x: Any) -> np.ndarray:
    """Check one party's DCF evaluation request; return the points as contiguous uint64 (N,)."""
    if party not in (0, 1):
        raise ValueError(f"party must be 0 or 1, got {party}")
    x = np.ascontiguousarray(np.asarray(x, dtype=np.uint64).reshape(-1))
    if x.size != key.seed.shape[0]:
        raise ValueError(f"{x.size} points for {key.seed.shape[0]} keys")
    return x


def check_chacha20(key: bytes, nonce: bytes, counter: int, nbytes: int) -> tuple[int, int]:
    """Check a ChaCha20 keystream request (RFC 8439); return ``(counter, nbytes)`` as integers.

    Raises
    ------
    ValueError
        On a bad key or nonce length, a negative length, or a counter that would wrap.
    """
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
        raise ValueError(f"ChaCha20 key must be {KEY_BYTES} bytes, got {len(key)}; pass a 32-byte seed")
    if not isinstance(nonce, bytes | bytearray) or len(nonce) != NONCE_BYTES:
        raise ValueError(f"ChaCha20 nonce must be {NONCE_BYTES} bytes (RFC 8439), got {len(nonce)}")
    counter = operator.index(counter)
    nbytes = operator.index(nbytes)
    if nbytes < 0:
        raise ValueError(f"nbytes must be >= 0, got {nbytes}")
    if not 0 <= counter <= MAX_COUNTER:
        raise ValueError(f"block counter must be in [0, 2^32 - 1], got {counter}")
    blocks = -(-nbytes // BLOCK_BYTES)
    if blocks and counter + blocks - 1 > MAX_COUNTER:
        raise ValueError(f"counter {counter} + {blocks} blocks of keystream exceeds the 32-bit block counter "
                         f"(RFC 8439 forbids wrapping); ask for at most {(MAX_COUNTER - counter + 1) * 64} bytes")
    return counter, nbytes
