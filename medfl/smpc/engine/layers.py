"""Secure inference layers on shares of one image (C, H, W): Conv2d, Linear, pools, residual add, ReLU.

Linear maps run as Beaver matrix products (convolutions through im2col, a local rearrangement
of shares), followed by one truncation; ReLU and max-pool use the FSS comparison of
:mod:`medfl.smpc.engine.relu` (max(a, b) = b + ReLU(a - b)); average pooling multiplies by a public
fixed-point constant and truncates; residual adds are local.

References
----------
.. [1] Mohassel and Zhang, "SecureML", IEEE S&P 2017.
.. [2] Ryffel et al., "AriaNN", PoPETs 2022.
.. [3] Chellapilla, Puri and Simard, "High Performance Convolutional Neural Networks for Document
   Processing", 2006 (im2col).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medfl.smpc import ring
from medfl.smpc.dealer import Dealer
from medfl.smpc.device import SmpcDevice, smpc_device
from medfl.smpc.engine.beaver import mask_weight, matmul
from medfl.smpc.engine.channel import Channel
from medfl.smpc.engine.relu import relu
from medfl.smpc.engine.truncation import truncate
from medfl.smpc.ring import MaskedWeight, Shared

__all__ = ["Session", "add", "avg_pool", "divide", "conv2d", "linear", "max_pool2d", "prepare_weight", "relu_layer"]


@dataclass(frozen=True)
class Session:
    """What every layer needs: the dealer, the channel, the fractional bits and the compute device.

    ``device`` runs the ring products and comparisons (:mod:`medfl.smpc.device`); by default
    the one ``MEDFL_SMPC_DEVICE`` names, else the host. It holds the session's resident
    weights, so each session gets its own.
    """

    dealer: Dealer
    channel: Channel
    frac_bits: int = ring.FRAC_BITS
    device: SmpcDevice = field(default_factory=smpc_device)


def _map(x: Shared, fn: object) -> Shared:
    f = fn  # a local rearrangement applied to both shares alike
    return Shared(np.ascontiguousarray(f(x.s0)), np.ascontiguousarray(f(x.s1)))  # type: ignore[operator]


def prepare_weight(w: Shared, s: Session) -> MaskedWeight:
    """Open a (k x n) weight's mask once for the session (Linear: in x out; Conv: C*kh*kw x out).

    The session's device keeps what its products need from it (resident on a GPU).
    """
    mw = mask_weight(w, s.dealer, s.channel)
    s.device.adopt(mw)
    return mw


def _trunc(z: Shared, s: Session) -> Shared:
    return truncate(z, s.dealer.trunc_pair(z.s0.shape, s.frac_bits), s.channel)


def _add_bias(z: Shared, bias: Shared | None) -> Shared:
    if bias is None:
        return z
    return Shared(z.s0 + bias.s0, z.s1 + bias.s1)


def linear(x: Shared, w: MaskedWeight, bias: Shared | None, s: Session) -> Shared:
    """Shares of ``x @ W + b`` for ``x`` of shape (m, k); two rounds (product, truncation)."""
    return _add_bias(_trunc(matmul(x, w, s.dealer, s.channel, s.device), s), bias)


def _im2col(a: np.ndarray, k: int, stride: int, pad: int) -> np.ndarray:
    c = a.shape[0]
    p = np.pad(a, ((0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(p, (k, k), axis=(1, 2))[:, ::stride, ::stride]
    ho, wo = win.shape[1], win.shape[2]
    return win.transpose(1, 2, 0, 3, 4).reshape(ho * wo, c * k * k)


def conv2d(x: Shared, w: MaskedWeight, bias: Shared | None, s: Session, *, kernel: int, stride: int = 1,
           padding: int = 0) -> Shared:
    """Shares of a 2-D convolution of ``x`` (C, H, W); ``w`` is the (C*k*k, C_out) weight matrix."""
    c, h, wd = x.s0.shape
    ho = (h + 2 * padding - kernel) // stride + 1
    wo = (wd + 2 * padding - kernel) // stride + 1
    cols = _map(x, lambda a: _im2col(a, kernel, stride, padding))
    z = _trunc(matmul(cols, w, s.dealer, s.channel, s.device), s)
    out = _map(z, lambda a: a.T.reshape(-1, ho, wo))
    if bias is not None:
        out = Shared(out.s0 + bias.s0[:, None, None], out.s1 + bias.s1[:, None, None])
    return out


def relu_layer(x: Shared, s: Session, *, bits: int = 64) -> Shared:
    """Shares of ``max(x, 0)`` (one round); ``bits`` is the planned raw range (see :mod:`medfl.smpc.engine.relu`)."""
    return relu(x, s.dealer.relu_keys(x.s0.size, bits=bits), s.channel, device=s.device)


def _max(a: Shared, b: Shared, s: Session, bits: int) -> Shared:
    d = relu_layer(Shared(a.s0 - b.s0, a.s1 - b.s1), s, bits=bits)
    return Shared(b.s0 + d.s0, b.s1 + d.s1)


def _max_tree(cand: Shared, s: Session, bits: int) -> Shared:
    """Maximum over axis 0 by a tree of pairwise maxima: ceil(log2 k) rounds."""
    while cand.s0.shape[0] > 1:
        m = cand.s0.shape[0] // 2
        best = _max(_map(cand, lambda a, m=m: a[:m]), _map(cand, lambda a, m=m: a[m:2 * m]), s, bits)
        if cand.s0.shape[0] % 2:
            best = Shared(np.concatenate([best.s0, cand.s0[-1:]]), np.concatenate([best.s1, cand.s1[-1:]]))
        cand = best
    return _map(cand, lambda a: a[0])


def max_pool2d(x: Shared, s: Session, *, kernel: int = 2, stride: int = 2, padding: int = 0,
               bits: int = 64) -> Shared:
    """Shares of a k x k max pool of (C, H, W) in 2 ceil(log2 k) rounds (k > 2) or ceil(log2 k^2).

    For k > 2 the pool is separable (a max over each row's windows, then over the columns of
    those), which compares ``k - 1`` times per row window and per output instead of ``k^2 - 1``
    per output: the 3 x 3 / stride-2 pool of a ResNet stem needs 1.5 instead of 2 comparisons per
    input element. Padding is with zeros, which is exact only next to a ReLU (the evaluator
    checks that); ``bits`` is the planned raw range of the differences compared.
    """
    c, h, w = x.s0.shape
    ho = (h + 2 * padding - kernel) // stride + 1
    wo = (w + 2 * padding - kernel) // stride + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"max pool {kernel}x{kernel} (stride {stride}, padding {padding}) does not fit {h}x{w}")
    span = (ho - 1) * stride + 1, (wo - 1) * stride + 1
    padded = _map(x, lambda a: np.pad(a, ((0, 0), (padding, padding), (padding, padding))))
    if kernel <= 2:
        return _max_tree(_map(padded, lambda p: np.stack([p[:, i:i + span[0]:stride, j:j + span[1]:stride]
                                                          for i in range(kernel) for j in range(kernel)])), s, bits)
    rows = _max_tree(_map(padded, lambda p: np.stack([p[:, :, j:j + span[1]:stride] for j in range(kernel)])), s,
                     bits)  # (C, H + 2 padding, Wo)
    return _max_tree(_map(rows, lambda p: np.stack([p[:, i:i + span[0]:stride, :] for i in range(kernel)])), s, bits)


def _divide_extra_bits(n: int) -> int:
    return min(max(int(np.ceil(np.log2(n))), 0), 22)


def divide_headroom_bits(bound: float, n: int, frac_bits: int) -> float:
    """Bits the raw product of :func:`divide` needs for ``|x / n| <= bound``: ``log2(bound) + 2f + e``.

    It must stay below the truncation headroom (:data:`medfl.smpc.engine.truncation.HEADROOM_BITS`).
    """
    return float(np.log2(max(bound, 2.0**-frac_bits))) + 2 * frac_bits + _divide_extra_bits(n)


def divide(x: Shared, n: int, s: Session) -> Shared:
    """Shares of ``x / n`` for a public integer ``n`` (one round), to about 2^-16 relative precision.

    ``1/n`` in ``frac_bits`` fixed point would be off by up to 50% for large ``n`` (a GroupNorm
    over 49152 elements would use 1/65536), so the constant ``round(2^(f+e) / n)`` carries
    ``e = ceil(log2 n)`` extra bits and the truncation removes ``f + e`` bits. The raw product is
    ``x 2^f * 2^(f+e) / n = (x / n) 2^(2f+e)``, which stays inside the truncation headroom while
    ``|x / n| < 2^(62-2f-e)`` in real units (``e`` is at most 22 here): with f = 16 and a GroupNorm
    over 49152 elements, means and variances below 2^14. :func:`divide_headroom_bits` is the
    check the model's compilation runs against its calibrated ranges.
    """
    if n < 1:
        raise ValueError(f"divisor must be a positive integer, got {n}")
    e = _divide_extra_bits(n)
    scale = np.uint64(int(round(2.0 ** (s.frac_bits + e) / n)))
    pair = s.dealer.trunc_pair(x.s0.shape, s.frac_bits + e)
    return truncate(Shared(x.s0 * scale, x.s1 * scale), pair, s.channel)


def avg_pool(x: Shared, k: int, s: Session) -> Shared:
    """Shares of a k x k, stride-k average pool of (C, H, W), H and W divisible by k (one round)."""
    c, h, w = x.s0.shape
    summed = _map(x, lambda a: a.reshape(c, h // k, k, w // k, k).sum(axis=(2, 4), dtype=np.uint64))
    return divide(summed, k * k, s)


def add(a: Shared, b: Shared) -> Shared:
    """Shares of ``a + b`` (residual connection; local)."""
    return Shared(a.s0 + b.s0, a.s1 + b.s1)
