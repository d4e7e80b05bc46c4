"""CUDA secagg kernels against the CPU reference (marked ``gpu``; skipped cleanly without a GPU)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from medfl.secagg import masking, prg
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
    assert out.cpu().numpy().tobytes() == prg.chacha20_keystream_reference(key, nonce, 5, nbytes)


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
    masking.apply_masks_reference(want, masks, nonce)
    dev = torch.from_numpy(vec.view(np.int32 if ring_bits == 32 else np.int64).copy()).cuda()
    keys = np.frombuffer(b"".join(m.seed for m in masks), dtype=np.uint8)
    signs = np.array([m.sign for m in masks], dtype=np.int8)
    _native.apply_masks_cuda(dev.data_ptr(), ring_bits, n, keys, signs, nonce, torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    np.testing.assert_array_equal(dev.cpu().numpy().view(dtype), want)
