"""Native masking kernels against the reference, bit for bit, and the quantize -> mask -> unmask round trip."""

from __future__ import annotations

import os

import numpy as np
import pytest

from medfl import native
from medfl.errors import NonFiniteError, RingOverflowError
from medfl.native import reference
from medfl.secagg import masking
from medfl.secagg.masking import MaskSeed
from medfl.secagg.quantization import QuantSpec

needs_native = pytest.mark.skipif(native.native_module() is None, reason="medfl._native is not built")

NONCE = bytes(range(12))


def _masks(k: int) -> list[MaskSeed]:
    return [MaskSeed(os.urandom(32), 1 if i % 3 else -1) for i in range(k)]


@needs_native
@pytest.mark.parametrize("ring_bits", [32, 64])
@pytest.mark.parametrize("n", [0, 1, 3, 127, 128, 129, 1000, 100_003])
@pytest.mark.parametrize("n_masks", [0, 1, 2, 9])
def test_apply_masks_matches_reference(ring_bits: int, n: int, n_masks: int) -> None:
    dtype = np.uint32 if ring_bits == 32 else np.uint64
    rng = np.random.default_rng(n + n_masks)
    vec = rng.integers(0, np.iinfo(dtype).max, size=n, dtype=dtype, endpoint=True)
    masks = _masks(n_masks)
    want = vec.copy()
    reference.apply_masks_reference(want, masks, NONCE)
    got = vec.copy()
    masking.apply_masks(got, masks, NONCE)
    np.testing.assert_array_equal(got, want)


@needs_native
@pytest.mark.parametrize("ring_bits", [32, 64])
@pytest.mark.parametrize("n_masks", [0, 1, 8, 33])
def test_quantize_and_mask_matches_reference(ring_bits: int, n_masks: int) -> None:
    spec = QuantSpec(ring_bits=ring_bits, frac_bits=16 if ring_bits == 32 else 32, clip_norm=1.0, n_agents=4)
    rng = np.random.default_rng(7)
    x = rng.uniform(-1, 1, size=(3, 1001)).astype(np.float32)[:, ::2]  # non-contiguous, odd size
    x[0, :5] = 0.0
    x[1, :2] = (1.0, -1.0)
    masks = _masks(n_masks)
    want = reference.quantize_and_mask_reference(x, spec=spec, masks=masks, nonce=NONCE, rounding_seed=42)
    got = masking.quantize_and_mask(x, spec=spec, masks=masks, nonce=NONCE, rounding_seed=42)
    assert got.dtype == spec.dtype
    np.testing.assert_array_equal(got, want)
    back = masking.unmask_and_dequantize(got, spec=spec, masks=masks, nonce=NONCE)
    back_ref = reference.unmask_and_dequantize_reference(got, spec=spec, masks=masks, nonce=NONCE)
    np.testing.assert_array_equal(back, back_ref)
    assert np.max(np.abs(back - x.reshape(-1))) <= 2.0 ** -spec.frac_bits


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rejected(bad: float) -> None:
    spec = QuantSpec(ring_bits=32, frac_bits=16, clip_norm=1.0, n_agents=2)
    x = np.zeros(10, dtype=np.float32)
    x[3] = bad
    with pytest.raises(NonFiniteError):
        masking.quantize_and_mask(x, spec=spec, masks=_masks(2), nonce=NONCE, rounding_seed=1)


def test_ring_overflow_rejected() -> None:
    spec = QuantSpec(ring_bits=32, frac_bits=16, clip_norm=1.0, n_agents=2)
    x = np.array([0.5, 2.0**20], dtype=np.float32)  # not clipped: beyond the 32-bit ring at f = 16
    with pytest.raises(RingOverflowError):
        masking.quantize_and_mask(x, spec=spec, masks=_masks(1), nonce=NONCE, rounding_seed=1)


def test_bad_nonce_rejected() -> None:
    spec = QuantSpec(ring_bits=32, frac_bits=16, clip_norm=1.0, n_agents=2)
    with pytest.raises(ValueError, match="nonce must be 12 bytes"):
        masking.quantize_and_mask(np.zeros(4, np.float32), spec=spec, masks=[], nonce=b"x", rounding_seed=1)


@pytest.mark.parametrize("ring_bits", [32, 64])
@pytest.mark.parametrize("n_agents", [1, 2, 5])
def test_sum_of_masked_uploads_unmasks_to_sum(ring_bits: int, n_agents: int) -> None:
    """Pairwise masks cancel in the sum; the self masks are removed; error <= n * 2^-f per coordinate."""
    spec = QuantSpec(ring_bits=ring_bits, frac_bits=12 if ring_bits == 32 else 30, clip_norm=4.0, n_agents=n_agents)
    rng = np.random.default_rng(ring_bits * 10 + n_agents)
    xs = [rng.uniform(-1, 1, size=517).astype(np.float32) for _ in range(n_agents)]
    pair = {(i, j): os.urandom(32) for i in range(n_agents) for j in range(i + 1, n_agents)}
    selfs = [os.urandom(32) for _ in range(n_agents)]
    total = np.zeros(517, dtype=spec.dtype)
    for i, x in enumerate(xs):
        masks = [MaskSeed(selfs[i], 1)]
        masks += [MaskSeed(s, 1 if i == a else -1) for (a, b), s in pair.items() if i in (a, b)]
        y = masking.quantize_and_mask(x, spec=spec, masks=masks, nonce=NONCE, rounding_seed=100 + i)
        total += y
    out = masking.unmask_and_dequantize(total, spec=spec, masks=[MaskSeed(s, 1) for s in selfs], nonce=NONCE)
    assert np.max(np.abs(out - np.sum(xs, axis=0))) <= n_agents * 2.0 ** -spec.frac_bits + 1e-5
    # in place (what the coordinator does with its own sum): the same values, the masks removed from total itself
    kept = total.copy()
    in_place = masking.unmask_and_dequantize(total, spec=spec, masks=[MaskSeed(s, 1) for s in selfs], nonce=NONCE,
                                             copy=False)
    assert np.array_equal(in_place, out) and not np.array_equal(total, kept)
    assert np.array_equal(masking.dequantize_sum(total, spec=spec), out)


def test_unmasking_in_place_refuses_an_array_it_cannot_write() -> None:
    spec = QuantSpec(ring_bits=32, frac_bits=12, clip_norm=4.0, n_agents=2)
    ro = np.zeros(8, dtype=np.uint32)
    ro.flags.writeable = False
    for bad in (ro, np.zeros(8, dtype=np.uint64), np.zeros(16, dtype=np.uint32)[::2], [0] * 8):
        with pytest.raises(ValueError, match="in place"):
            masking.unmask_and_dequantize(bad, spec=spec, masks=[MaskSeed(bytes(32), 1)], nonce=NONCE, copy=False)


@needs_native
@pytest.mark.parametrize("ring_bits", [32, 64])
@pytest.mark.parametrize("n", [1, 4095, 4096, 4097, 70_001])
def test_fused_kernel_matches_reference_across_tiles(ring_bits: int, n: int) -> None:
    spec = QuantSpec(ring_bits=ring_bits, frac_bits=20 if ring_bits == 32 else 40, clip_norm=1.0, n_agents=3)
    x = np.random.default_rng(n).uniform(-1, 1, n).astype(np.float32)
    masks = _masks(5)
    want = reference.quantize_and_mask_reference(x, spec=spec, masks=masks, nonce=NONCE, rounding_seed=2**64 - 3)
    got = masking.quantize_and_mask(x, spec=spec, masks=masks, nonce=NONCE, rounding_seed=2**64 - 3)
    np.testing.assert_array_equal(got, want)


@needs_native
def test_fused_kernel_reports_first_bad_value_of_any_tile() -> None:
    spec = QuantSpec(ring_bits=32, frac_bits=16, clip_norm=1.0, n_agents=2)
    x = np.zeros(50_000, dtype=np.float32)
    x[9000] = 2.0**20  # overflow in an early tile
    x[40_000] = np.nan  # non-finite in a later tile: reported first, as fixed_point.encode does
    with pytest.raises(NonFiniteError, match="40000"):
        masking.quantize_and_mask(x, spec=spec, masks=_masks(2), nonce=NONCE, rounding_seed=1)
    x[40_000] = 0.0
    with pytest.raises(RingOverflowError, match="9000"):
        masking.quantize_and_mask(x, spec=spec, masks=_masks(2), nonce=NONCE, rounding_seed=1)
