"""CUDA ring product and DCF evaluation vs the CPU kernels, bit for bit (skip without a GPU).

The GPU's AES is the 32-bit T-table formulation; ``test_ttable_aes_formulation_matches_openssl``
checks that formulation and the tables the kernel uploads against OpenSSL on the CPU, so it runs
everywhere.
"""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from medfl import native
from medfl.native import reference
from medfl.smpc import ring
from medfl.smpc.fss import dcf as fss

RNG = np.random.default_rng(41)  # test data only


def _rotl(v: np.ndarray, c: int) -> np.ndarray:
    return ((v << np.uint32(c)) | (v >> np.uint32(32 - c))).astype(np.uint32)


def _ttable_aes(block: np.ndarray, rk: np.ndarray, t0: np.ndarray) -> np.ndarray:
    """AES-128 of (N, 4) little-endian column words, exactly as the CUDA kernel computes it."""
    s = block ^ rk[0:4]
    b = lambda w, i: ((w >> np.uint32(8 * i)) & np.uint32(0xFF)).astype(np.intp)  # noqa: E731
    for r in range(1, 10):
        s = np.stack([t0[b(s[:, c], 0)] ^ _rotl(t0[b(s[:, (c + 1) % 4], 1)], 8) ^ _rotl(t0[b(s[:, (c + 2) % 4], 2)], 16)
                      ^ _rotl(t0[b(s[:, (c + 3) % 4], 3)], 24) ^ rk[4 * r + c] for c in range(4)], axis=1)
    sbox = (t0 >> np.uint32(8)) & np.uint32(0xFF)
    cols = []
    for c in range(4):
        word = (sbox[b(s[:, c], 0)] | (sbox[b(s[:, (c + 1) % 4], 1)] << np.uint32(8))
                | (sbox[b(s[:, (c + 2) % 4], 2)] << np.uint32(16)) | (sbox[b(s[:, (c + 3) % 4], 3)] << np.uint32(24)))
        cols.append(word ^ rk[40 + c])
    return np.stack(cols, axis=1).astype(np.uint32)


def test_ttable_aes_formulation_matches_openssl() -> None:
    mod = native.native_module()
    if mod is None:
        pytest.skip("medfl._native is not built")
    rk, t0 = mod.aes_tables()
    blocks = RNG.integers(0, 2**32, size=(257, 4), dtype=np.uint64).astype(np.uint32)
    blocks[0] = 0
    blocks[1] = 2**32 - 1
    enc = Cipher(algorithms.AES(bytes(range(16))), modes.ECB()).encryptor()
    want = np.frombuffer(enc.update(blocks.astype("<u4").tobytes()), dtype="<u4").reshape(-1, 4)
    assert np.array_equal(_ttable_aes(blocks, rk, t0), want)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 9, 24), (65, 257, 9), (130, 300, 17), (256, 576, 64)])
def test_cuda_ring_matmul_equals_cpu(cuda: str, shape: tuple[int, int, int]) -> None:
    import torch

    m, k, n = shape
    a = RNG.integers(0, 2**64, size=(m, k), dtype=np.uint64)
    b = RNG.integers(0, 2**64, size=(k, n), dtype=np.uint64)
    a[0, 0], b[0, 0] = 2**64 - 1, 2**64 - 1
    da, db = (torch.from_numpy(v.view(np.int64)).cuda() for v in (a, b))
    out = native.ring_matmul(da, db)
    torch.cuda.synchronize()
    assert np.array_equal(out.cpu().numpy().view(np.uint64), ring.matmul(a, b))
    acc = torch.from_numpy(RNG.integers(0, 2**64, size=(m, n), dtype=np.uint64).view(np.int64)).cuda()
    want = acc.cpu().numpy().view(np.uint64) + a @ b
    native.ring_matmul(da, db, out=acc, accumulate=True)
    torch.cuda.synchronize()
    assert np.array_equal(acc.cpu().numpy().view(np.uint64), want)


@pytest.mark.gpu
@pytest.mark.parametrize("bits,payload", [(64, 1), (63, 2), (26, 2), (1, 1)])
def test_cuda_dcf_eval_equals_reference(cuda: str, bits: int, payload: int) -> None:
    import torch

    n = 1000
    mask = np.uint64(2**64 - 1) if bits == 64 else np.uint64(2**bits - 1)
    alpha = RNG.integers(0, 2**64, size=n, dtype=np.uint64) & mask
    beta = RNG.integers(0, 2**64, size=(n, payload), dtype=np.uint64)
    keys = fss.dcf_gen(alpha, beta, bits=bits)
    x = RNG.integers(0, 2**64, size=n, dtype=np.uint64) & mask
    x[:10] = alpha[:10]
    mod = native.native_module()
    for party, key in enumerate(keys):
        dev = [torch.from_numpy(np.ascontiguousarray(v).view(np.int64 if v.dtype == np.uint64 else np.uint8)).cuda()
               for v in (key.seed, key.s_cw, key.v_cw, key.t_cw, key.final, x)]
        out = torch.empty((n, payload), dtype=torch.int64, device="cuda")
        mod.dcf_eval_cuda(party, *(d.data_ptr() for d in dev), out.data_ptr(), n, bits, payload,  # type: ignore[union-attr]
                          torch.cuda.current_stream().cuda_stream)
        torch.cuda.synchronize()
        assert np.array_equal(out.cpu().numpy().view(np.uint64), reference.dcf_eval_reference(party, key, x))
