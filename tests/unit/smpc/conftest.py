"""Shared fixtures of the SMPC tests: ``pointer_native`` runs medfl.native's CUDA code on CPU tensors."""

from __future__ import annotations

import contextlib
import ctypes
from typing import Any

import numpy as np
import pytest
import torch

from medfl import native
from medfl.native import backend, cuda


class PointerNative:
    """medfl._native's CUDA entry points on host pointers: its host kernels behind the same arguments.

    ``calls`` lists the CUDA entry points reached, in order.
    """

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls: list[str] = []

    @staticmethod
    def _arr(ptr: int, shape: tuple[int, ...], dtype: Any = np.uint64) -> np.ndarray:
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return np.frombuffer((ctypes.c_char * size).from_address(ptr), dtype=dtype).reshape(shape)

    def __getattr__(self, name: str) -> Any:  # host kernels (encode, dcf_gen, ...) as they are
        return getattr(self.real, name)

    def build_info(self) -> dict[str, Any]:
        return {"cuda": True}

    def ring_matmul_cuda(self, a: int, b: int, out: int, m: int, k: int, n: int, accumulate: bool,
                         stream: int) -> None:
        self.calls.append("ring_matmul_cuda")
        self.real.ring_matmul(self._arr(a, (m, k)), self._arr(b, (k, n)), self._arr(out, (m, n)), accumulate)

    def dcf_eval_cuda(self, party: int, seed: int, s_cw: int, v_cw: int, t_cw: int, final: int, x: int, out: int,
                      n: int, bits: int, payload: int, stream: int) -> None:
        self.calls.append("dcf_eval_cuda")
        self.real.dcf_eval(party, self._arr(seed, (n, 2)), self._arr(s_cw, (n, bits, 2)),
                           self._arr(v_cw, (n, bits, payload)), self._arr(t_cw, (n, bits, 2), np.uint8),
                           self._arr(final, (n, payload)), self._arr(x, (n,)), self._arr(out, (n, payload)), bits,
                           payload)

    def chacha20_keystream_cuda(self, key: bytes, nonce: bytes, counter: int, out: int, nbytes: int,
                                stream: int) -> None:
        self.calls.append("chacha20_keystream_cuda")
        ctypes.memmove(out, self.real.chacha20_keystream(key, nonce, counter, nbytes), nbytes)

    def dcf_gen_cuda(self, alpha: int, beta: int, roots: int, s_cw: int, v_cw: int, t_cw: int, final: int, n: int,
                     bits: int, payload: int, stream: int) -> None:
        self.calls.append("dcf_gen_cuda")
        self.real.dcf_gen(self._arr(alpha, (n,)), self._arr(beta, (n, payload)), self._arr(roots, (2, n, 2)),
                          self._arr(s_cw, (n, bits, 2)), self._arr(v_cw, (n, bits, payload)),
                          self._arr(t_cw, (n, bits, 2), np.uint8), self._arr(final, (n, payload)), bits, payload)


@pytest.fixture
def pointer_native(monkeypatch: pytest.MonkeyPatch) -> PointerNative:
    """medfl.native's CUDA paths on CPU tensors: host pointers in, the host kernels behind the CUDA entry points."""
    real = native.native_module()
    if real is None:
        pytest.skip("medfl._native is not built")

    def info(a: Any, name: str) -> tuple[int, str, tuple[int, ...], int, Any]:
        assert a.is_contiguous(), name
        return a.data_ptr(), str(a.dtype).replace("torch.", ""), tuple(a.shape), 0, contextlib.nullcontext()

    fake = PointerNative(real)
    monkeypatch.setattr(backend, "native_module", lambda: fake)
    monkeypatch.setattr(backend, "is_device_array", lambda x: isinstance(x, torch.Tensor))
    monkeypatch.setattr(backend, "forced", lambda: None)
    monkeypatch.setattr(cuda, "info", info)
    return fake
