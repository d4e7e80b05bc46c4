"""The dealer on a GPU: generator choice and errors, its plumbing on host stand-ins, and the CUDA kernels vs the host.

Bit identity needs the same CSPRNG keys on both generators, so these tests replace
``csprng.token_bytes`` by a seeded test generator and keep the real ChaCha20 expansion: every
draw is then the keystream of the same key on the host (OpenSSL) and on the device. The
device path (:class:`CudaGenerator` through ``medfl.native``'s CUDA paths) also runs here on CPU tensors,
with medfl._native's CUDA entry points answered by its host kernels behind the same pointers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from medfl import csprng
from medfl.native import chacha20, dcf
from medfl.smpc import InMemoryChannel, LocalDealer, fss
from medfl.smpc.dealer.generator import CudaGenerator, HostGenerator, generator_for
from medfl.smpc.dealer.prefetch import PrefetchDealer
from medfl.smpc.device import CudaDevice, HostDevice, smpc_device
from medfl.smpc.engine.layers import Session
from medfl.smpc.evaluator import SecureModel
from medfl.smpc.ring.sharing import Shared
from medfl.smpc.session.provider import DealerService
from tests.conftest import cuda_skip_reason


def _seed_keys(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """Deterministic CSPRNG keys (tests only); the ChaCha20 expansion of each key stays the real one."""
    gen = np.random.default_rng(seed)
    monkeypatch.setattr(csprng, "token_bytes", lambda n: gen.bytes(n))


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)  # test model weights only
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 2)).eval()


def _images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)  # test images only
    return [rng.standard_normal((1, 16, 16)).astype(np.float32) for _ in range(n)]


def _arrays(item: Any) -> list[np.ndarray]:
    """Every array of a piece of dealer material, in a fixed order."""
    if isinstance(item, np.ndarray):
        return [item]
    if isinstance(item, Shared):
        return [item.s0, item.s1]
    if isinstance(item, fss.DcfKey):
        return [item.seed, item.s_cw, item.v_cw, item.t_cw, item.final]
    if isinstance(item, tuple | list):
        return [a for x in item for a in _arrays(x)]
    return [a for v in vars(item).values() if not isinstance(v, int) for a in _arrays(v)]


def _material(dealer: LocalDealer) -> list[np.ndarray]:
    """One of each kind of material, in the order a query asks for them."""
    b = dealer.weight_mask((27, 5))
    out = [b, dealer.matmul_triple(33, b), dealer.trunc_pair((3, 7), 16), dealer.relu_keys(41, bits=23),
           dealer.relu_keys(6, bits=64), dealer.mul_triple((2, 9))]
    return _arrays(out)


def _assert_same(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape and g.flags.c_contiguous == w.flags.c_contiguous
        assert np.array_equal(g, w)


def _logits(dealer: Any, device: Any, n: int = 2, prefetch: bool = False) -> list[np.ndarray]:
    sm = SecureModel(_cnn(), Session(dealer, InMemoryChannel(), device=device), (1, 16, 16))
    out = []
    for i, img in enumerate(_images(n)):
        if prefetch and i:
            dealer.prefetch()
        out.append(sm(img))
        if prefetch and i == 0:
            dealer.end_query()
    return out


# ---------------------------------------------------------------- choice and errors (run everywhere)

def test_generator_follows_the_device_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDFL_SMPC_DEVICE", raising=False)
    assert isinstance(generator_for(), HostGenerator)
    assert isinstance(LocalDealer().generator, HostGenerator)
    assert isinstance(LocalDealer(device=" CPU ").generator, HostGenerator)
    assert isinstance(LocalDealer(device=HostDevice()).generator, HostGenerator)
    gen = LocalDealer(device=CudaDevice(torch.device("cpu"))).generator  # a device object: its own device
    assert isinstance(gen, CudaGenerator) and gen.device == torch.device("cpu")
    with pytest.raises(ValueError, match="did you mean 'cuda'"):
        LocalDealer(device="cdua")
    monkeypatch.setenv("MEDFL_SMPC_DEVICE", "gpu")
    with pytest.raises(ValueError, match="MEDFL_SMPC_DEVICE='gpu' is not an SMPC device; use one of cpu, cuda"):
        LocalDealer()


def test_dealer_service_resolves_its_device_up_front(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDFL_SMPC_DEVICE", raising=False)
    with pytest.raises(ValueError, match="device='cdua' is not an SMPC device.*did you mean 'cuda'"):
        DealerService(channel=None, secret_raw=bytes(32), device="cdua")  # type: ignore[arg-type]
    assert DealerService(channel=None, secret_raw=bytes(32)).device == "cpu"  # type: ignore[arg-type]


def test_gpu_dealer_without_a_usable_gpu_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    if cuda_skip_reason() is None:
        pytest.skip("a GPU is usable here")
    monkeypatch.delenv("MEDFL_NATIVE", raising=False)
    with pytest.raises((RuntimeError, ValueError), match="cuda|CUDA|GPU") as err:
        LocalDealer(device="cuda")
    assert "use 'cpu'" in str(err.value) or "MEDFL_CUDA=1" in str(err.value) or "not built" in str(err.value)


def test_host_draws_are_the_keystream_of_one_key_each(monkeypatch: pytest.MonkeyPatch) -> None:
    _seed_keys(monkeypatch, 3)
    got = HostGenerator().uniform((4, 5))
    key = np.random.default_rng(3).bytes(32)
    want = np.frombuffer(csprng.expand(160, key=key), np.uint64).reshape(4, 5)
    assert np.array_equal(got, want)


# ---------------------------------------------------------------- the device path on CPU tensors

def test_device_dealer_plumbing_is_bit_identical_to_host(monkeypatch: pytest.MonkeyPatch,
                                                         pointer_native: Any) -> None:
    _seed_keys(monkeypatch, 5)
    host = LocalDealer(device="cpu")
    want = _material(host)
    _seed_keys(monkeypatch, 5)
    dealer = LocalDealer(device=CudaDevice(torch.device("cpu")))
    got = _material(dealer)
    _assert_same(got, want)
    assert {"chacha20_keystream_cuda", "ring_matmul_cuda", "dcf_gen_cuda"} <= set(pointer_native.calls)
    assert dealer.bytes_offline == host.bytes_offline


def test_device_dealer_keeps_the_weight_mask_resident(monkeypatch: pytest.MonkeyPatch,
                                                      pointer_native: Any) -> None:
    dealer = LocalDealer(device=CudaDevice(torch.device("cpu")))
    gen = dealer.generator
    assert isinstance(gen, CudaGenerator)
    puts = []
    real_put = gen._put
    monkeypatch.setattr(gen, "_put", lambda a: puts.append(a.shape) or real_put(a))
    b = dealer.weight_mask((6, 4))
    for m in (1, 5, 5):
        t = dealer.matmul_triple(m, b)
        assert np.array_equal(t.c.s0 + t.c.s1, (t.a.s0 + t.a.s1) @ (b.s0 + b.s1))
    assert puts == [(6, 4)]  # the clear mask went up once; the triples' A were drawn on the device


def test_cnn_with_the_device_dealer_plumbing_equals_the_host_dealer(monkeypatch: pytest.MonkeyPatch,
                                                                     pointer_native: Any) -> None:
    _seed_keys(monkeypatch, 11)
    want = _logits(LocalDealer(device="cpu"), HostDevice())
    _seed_keys(monkeypatch, 11)
    got = _logits(LocalDealer(device=CudaDevice(torch.device("cpu"))), HostDevice())
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g, w)


def test_native_cuda_dcf_gen_checks_its_arguments(pointer_native: Any) -> None:
    def t(shape: tuple[int, ...], dtype: Any = torch.int64) -> torch.Tensor:
        return torch.zeros(shape, dtype=dtype)

    gen = dcf._dcf_gen_cuda
    with pytest.raises(ValueError, match=r"bits must be an integer in \[1, 64\], got 0"):
        gen(t((4,)), t((4, 2)), t((2, 4, 2)), 0)
    with pytest.raises(ValueError, match=r"beta must be int64\(4, 1 or 2\) for 4 comparisons, got int64\(4, 3\)"):
        gen(t((4,)), t((4, 3)), t((2, 4, 2)), 8)
    with pytest.raises(ValueError, match=r"roots must be int64\(2, 4, 2\) for 4 comparisons, got int64\(4, 2\)"):
        gen(t((4,)), t((4, 2)), t((4, 2)), 8)
    with pytest.raises(ValueError, match=r"beta must be int64.*got uint8"):
        gen(t((4,)), t((4, 2), torch.uint8), t((2, 4, 2)), 8)
    with pytest.raises(TypeError, match="alpha is a GPU array but roots is ndarray"):
        gen(t((4,)), t((4, 2)), np.zeros((2, 4, 2), np.uint64), 8)
    with pytest.raises(TypeError, match=r"alpha must be a 1-D uint64 \(or int64\) device array, got int64\(4, 1\)"):
        gen(t((4, 1)), t((4, 2)), t((2, 4, 2)), 8)
    with pytest.raises(ValueError, match="key must be 32 bytes, got bytes of length 16"):
        chacha20.keystream(bytes(16), t((4,), torch.uint8))
    with pytest.raises(TypeError, match="out must be a uint8, uint64 or int64 device array"):
        chacha20.keystream(bytes(32), t((4,), torch.float32))
    assert pointer_native.calls == []  # nothing reached the kernels


def test_native_cuda_dcf_gen_passes_pointers_in_kernel_order(pointer_native: Any) -> None:
    rng = np.random.default_rng(2)  # test data only
    n, bits = 9, 13
    alpha = rng.integers(0, 2**bits, n, dtype=np.uint64)
    beta = rng.integers(0, 2**63, (n, 2), dtype=np.uint64)
    roots = rng.integers(0, 2**63, (2, n, 2), dtype=np.uint64)
    want = dcf._dcf_gen_cpu(alpha, beta, roots, bits)
    got = dcf._dcf_gen_cuda(*(torch.from_numpy(v.view(np.int64)) for v in (alpha, beta, roots)), bits)
    for g, w in zip(got, want, strict=True):
        assert tuple(g.shape) == w.shape
        assert np.array_equal(g.numpy().view(w.dtype), w)


# ---------------------------------------------------------------- the GPU itself

def _host_vs_cuda_dcf_gen(alpha: np.ndarray, beta: np.ndarray, bits: int) -> None:
    rng = np.random.default_rng(alpha.size + bits)  # test root seeds only
    roots = rng.integers(0, 2**64, (2, alpha.size, 2), dtype=np.uint64)
    want = dcf._dcf_gen_cpu(alpha, beta, roots, bits)
    dev = torch.device("cuda")
    got = dcf._dcf_gen_cuda(*(torch.from_numpy(v.view(np.int64)).to(dev) for v in (alpha, beta, roots)), bits)
    for g, w in zip(got, want, strict=True):
        h = g.cpu().numpy().view(w.dtype)
        assert h.shape == w.shape and np.array_equal(h, w)


@pytest.mark.gpu
@pytest.mark.parametrize("n,bits,payload,alpha_kind,beta_kind", [
    (777, 29, 1, "random", "random"),
    (777, 29, 2, "random", "random"),
    (513, 64, 2, "random", "random"),
    (129, 63, 1, "random", "random"),
    (1, 64, 2, "random", "random"),
    (1, 1, 1, "random", "random"),
    (65, 1, 2, "zero", "random"),
    (131, 17, 2, "zero", "random"),
    (131, 17, 1, "max", "random"),
    (257, 64, 2, "max", "random"),
    (99, 31, 2, "random", "zero"),
    (99, 31, 1, "random", "ones"),
])
def test_dcf_gen_cuda_equals_cpu_bit_for_bit(cuda: str, n: int, bits: int, payload: int, alpha_kind: str,
                                            beta_kind: str) -> None:
    rng = np.random.default_rng(n * 131 + bits)  # test data only
    top = np.uint64(2**bits - 1) if bits < 64 else np.uint64(2**64 - 1)
    alpha = {"random": rng.integers(0, 2**64, n, dtype=np.uint64), "zero": np.zeros(n, np.uint64),
             "max": np.full(n, top, np.uint64)}[alpha_kind]
    if alpha_kind == "random":
        alpha[: n // 2] &= top  # half inside the range, half with high bits the kernels must ignore
    beta = {"random": rng.integers(0, 2**64, (n, payload), dtype=np.uint64), "zero": np.zeros((n, payload), np.uint64),
            "ones": np.full((n, payload), 2**64 - 1, np.uint64)}[beta_kind]
    _host_vs_cuda_dcf_gen(alpha, beta, bits)


@pytest.mark.gpu
@pytest.mark.parametrize("payload", [1, 2])
def test_gpu_dealer_keys_evaluate_to_the_comparison(cuda: str, payload: int) -> None:
    rng = np.random.default_rng(4)  # test data only
    n, bits = 1001, 40
    alpha = rng.integers(0, 2**bits, n, dtype=np.uint64)
    alpha[:3] = [0, 2**bits - 1, 1]
    beta = rng.integers(0, 2**64, (n, payload), dtype=np.uint64)
    beta[3] = 0
    k0, k1 = generator_for("cuda").dcf_gen(alpha, beta, bits=bits)
    assert k0.seed.dtype == np.uint64 and k0.t_cw.dtype == np.uint8 and k0.v_cw.shape == (n, bits, payload)
    for x in (alpha, alpha - np.uint64(1), alpha + np.uint64(1), np.zeros(n, np.uint64),
              np.full(n, 2**bits - 1, np.uint64), rng.integers(0, 2**bits, n, dtype=np.uint64)):
        x = x & np.uint64(2**bits - 1)
        got = (fss.dcf_eval(0, k0, x) + fss.dcf_eval(1, k1, x)).reshape(n, payload)
        want = np.where((x < alpha)[:, None], beta, np.uint64(0))
        assert np.array_equal(got, want)


@pytest.mark.gpu
def test_gpu_dealer_material_is_bit_identical_to_host(cuda: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _seed_keys(monkeypatch, 5)
    want = _material(LocalDealer(device="cpu"))
    _seed_keys(monkeypatch, 5)
    _assert_same(_material(LocalDealer(device="cuda")), want)
    monkeypatch.setenv("MEDFL_SMPC_DEVICE", "cuda")
    assert isinstance(LocalDealer().generator, CudaGenerator)


@pytest.mark.gpu
def test_small_cnn_with_the_gpu_dealer_gives_the_host_logits(cuda: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _seed_keys(monkeypatch, 11)
    want = _logits(PrefetchDealer(LocalDealer(device="cpu")), HostDevice(), n=3, prefetch=True)
    _seed_keys(monkeypatch, 11)
    dev = smpc_device("cuda")
    got = _logits(PrefetchDealer(LocalDealer(device=dev), device=dev), dev, n=3, prefetch=True)
    for g, w, img in zip(got, want, _images(3), strict=True):
        assert np.array_equal(g, w)
        with torch.no_grad():
            plain = _cnn()(torch.from_numpy(img)[None])[0].double().numpy()
        assert np.max(np.abs(g - plain)) < 5e-2
