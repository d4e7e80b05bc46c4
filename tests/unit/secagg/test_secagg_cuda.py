"""CUDA secagg kernels against the CPU reference (marked ``gpu``; skipped cleanly without a GPU)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from medfl.native import reference
from medfl.secagg import masking
from medfl.secagg.masking import MaskSeed

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("nbytes", [1, 63, 64, 65, 4099, 1 << 20])
def test_cuda_keystream_matches_openssl(cuda: str, nbytes: int) -> None:
    import torch

    from medfl import _native

    key, nonce = os.urandom(32), os.urandom(12)
    out = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    stream = torch.cuda.current_stream().cuda_stream
    _native.chacha20_keystream_cuda(key, nonce, 5, out.data_ptr(), nbytes, stream)
    torch.cuda.synchronize()
    assert out.cpu().numpy().tobytes() == reference.chacha20_keystream_reference(key, nonce, 5, nbytes)


@pytest.mark.parametrize("ring_bits", [32, 64])
@pytest.mark.parametrize("n", [1, 17, 100_003])
def test_cuda_apply_masks_matches_reference(cuda: str, ring_bits: int, n: int) -> None:
    import torch

    from medfl import _native

    dtype = np.uint32 if ring_bits == 32 else np.uint64
    vec = np.random.default_rng(n).integers(0, np.iinfo(dtype).max, size=n, dtype=dtype, endpoint=True)
    masks = [MaskSeed(os.urandom(32), s) for s in (1, -1, 1, 1, -1)]
    nonce = os.urandom(12)
    want = vec.copy()
    reference.apply_masks_reference(want, masks, nonce)
    dev = torch.from_numpy(vec.view(np.int32 if ring_bits == 32 else np.int64).copy()).cuda()
    keys = np.frombuffer(b"".join(m.seed for m in masks), dtype=np.uint8)
    signs = np.array([m.sign for m in masks], dtype=np.int8)
    _native.apply_masks_cuda(dev.data_ptr(), ring_bits, n, keys, signs, nonce, torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    np.testing.assert_array_equal(dev.cpu().numpy().view(dtype), want)


def _host(t):  # torch uint32/uint64 CUDA tensor -> NumPy, through a signed view that every torch converts
    import torch

    signed = torch.int32 if t.dtype == torch.uint32 else torch.int64
    return t.view(signed).cpu().numpy().view(np.uint32 if t.dtype == torch.uint32 else np.uint64)


@pytest.mark.parametrize("ring_bits", [32, 64])
@pytest.mark.parametrize("n", [1, 15, 16, 17, 4097, 250_001])
def test_cuda_quantize_and_mask_matches_reference(cuda: str, ring_bits: int, n: int) -> None:
    import torch

    from medfl.secagg.quantization import QuantSpec

    spec = QuantSpec(ring_bits=ring_bits, frac_bits=16 if ring_bits == 32 else 24, clip_norm=4.0, n_agents=4)
    x = (np.random.default_rng(n).standard_normal(n) * 0.3).astype(np.float32)
    masks = [MaskSeed(os.urandom(32), s) for s in (1, -1, 1)]
    nonce = os.urandom(12)
    want = reference.quantize_and_mask_reference(x, spec=spec, masks=masks, nonce=nonce, rounding_seed=99)
    got = masking.quantize_and_mask(torch.from_numpy(x).cuda(), spec=spec, masks=masks, nonce=nonce,
                                    rounding_seed=99)
    assert got.is_cuda
    np.testing.assert_array_equal(_host(got), want)
    back = masking.unmask_and_dequantize(got, spec=spec, masks=masks, nonce=nonce)
    np.testing.assert_allclose(back.cpu().numpy(), x, atol=2.0 ** -spec.frac_bits)


def test_cuda_masks_misaligned_views_and_many_masks(cuda: str) -> None:
    import torch

    base = np.random.default_rng(1).integers(0, 2**32, size=1001, dtype=np.uint64).astype(np.uint32)
    masks = [MaskSeed(os.urandom(32), 1 if j % 3 else -1) for j in range(600)]  # two kernel calls
    nonce = os.urandom(12)
    dev = torch.from_numpy(base.view(np.int32).copy()).cuda().view(torch.uint32)
    view = dev[3:]  # 12 bytes past a 16-byte boundary: the word-by-word path
    want = base[3:].copy()
    reference.apply_masks_reference(want, masks, nonce)
    masking.apply_masks(view, masks, nonce)
    torch.cuda.synchronize()
    np.testing.assert_array_equal(_host(dev)[3:], want)
    np.testing.assert_array_equal(_host(dev)[:3], base[:3])  # nothing outside the view was touched


def test_cuda_mask_rejects_float_vectors(cuda: str) -> None:
    import torch

    with pytest.raises(TypeError, match="uint32 or uint64"):
        masking.apply_masks(torch.zeros(8, device="cuda"), [MaskSeed(os.urandom(32), 1)], os.urandom(12))


@pytest.mark.parametrize("bad, error", [(float("nan"), "NonFiniteError"), (float("inf"), "NonFiniteError"),
                                        (1e30, "RingOverflowError")])
def test_cuda_quantize_and_mask_rejects_bad_values_with_their_index(cuda: str, bad: float, error: str) -> None:
    import torch

    from medfl import errors
    from medfl.secagg.quantization import QuantSpec

    spec = QuantSpec(ring_bits=32, frac_bits=16, clip_norm=4.0, n_agents=4)
    x = torch.zeros(1000, device="cuda")
    x[777] = bad
    x[901] = bad
    with pytest.raises(getattr(errors, error), match="777"):
        masking.quantize_and_mask(x, spec=spec, masks=[MaskSeed(os.urandom(32), 1)], nonce=os.urandom(12),
                                  rounding_seed=1)


@pytest.mark.parametrize("n_masks", [0, 513])
def test_cuda_quantize_and_mask_without_masks_and_beyond_shared_memory(cuda: str, n_masks: int) -> None:
    import torch

    from medfl.secagg.quantization import QuantSpec

    spec = QuantSpec(ring_bits=64, frac_bits=24, clip_norm=4.0, n_agents=4)
    x = np.random.default_rng(5).standard_normal(333).astype(np.float32)
    masks = [MaskSeed(os.urandom(32), 1 if j % 2 else -1) for j in range(n_masks)]
    nonce = os.urandom(12)
    want = reference.quantize_and_mask_reference(x, spec=spec, masks=masks, nonce=nonce, rounding_seed=2**64 - 1)
    got = masking.quantize_and_mask(torch.from_numpy(x).cuda(), spec=spec, masks=masks, nonce=nonce,
                                    rounding_seed=2**64 - 1)
    np.testing.assert_array_equal(_host(got), want)
    empty = masking.quantize_and_mask(torch.zeros(0, device="cuda"), spec=spec, masks=masks, nonce=nonce,
                                      rounding_seed=0)
    assert empty.numel() == 0
