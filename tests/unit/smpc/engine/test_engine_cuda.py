"""The engine's compute device: choice and errors, the CUDA plumbing, and whole models on the GPU vs the host.

Bit identity needs the same shares and dealer material on both devices, so these tests replace
medfl's CSPRNG by a seeded test generator and run the host and the device from the same seed.
The plumbing of :class:`CudaDevice` (resident weights, transfers, both parties' products in
one launch) is also run here on CPU tensors with host kernels, so it is checked without a GPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from medfl import csprng, native
from medfl.models.resnet import resnet18
from medfl.native import backend, dcf
from medfl.smpc import InMemoryChannel, LocalDealer, fss, ring
from medfl.smpc.dealer.prefetch import PrefetchDealer
from medfl.smpc.device import CudaDevice, HostDevice, resolve_device, smpc_device
from medfl.smpc.engine.layers import Session
from medfl.smpc.evaluator import SecureModel, calibrate
from tests.conftest import cuda_skip_reason


def _seed_csprng(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """Deterministic protocol randomness (tests only): the same seed gives the same shares and dealer material."""
    gen = np.random.default_rng(seed)
    monkeypatch.setattr(csprng, "expand", lambda n, key=None: gen.bytes(n))
    monkeypatch.setattr(csprng, "token_bytes", lambda n: gen.bytes(n))


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)  # test model weights only
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 2)).eval()


def _resnet(side: int) -> tuple[nn.Module, Any]:
    torch.manual_seed(0)  # test model weights only
    model = resnet18().eval()
    rng = np.random.default_rng(5)
    cal = calibrate(model, [rng.standard_normal((1, side, side)).astype(np.float32) for _ in range(2)])
    return model, cal


def _images(side: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)  # test images only
    return [rng.standard_normal((1, side, side)).astype(np.float32) for _ in range(n)]


def _logits(monkeypatch: pytest.MonkeyPatch, model: nn.Module, side: int, cal: Any, device: Any, n: int = 2,
            prefetch: bool = False) -> list[np.ndarray]:
    """Raw logit shares reconstructed, from a fixed randomness seed, on ``device`` (a name or an object)."""
    _seed_csprng(monkeypatch, 11)
    dev = smpc_device(device) if isinstance(device, str) else device
    dealer: Any = PrefetchDealer(LocalDealer(), device=dev) if prefetch else LocalDealer()
    sm = SecureModel(model, Session(dealer, InMemoryChannel(), device=dev), (1, side, side), cal)
    out = []
    for i, img in enumerate(_images(side, n)):
        if prefetch and i:
            dealer.prefetch()
        out.append(sm(img))
        if prefetch and i == 0:
            dealer.end_query()
    return out


class _CpuTensorDevice(CudaDevice):
    """CudaDevice's plumbing on CPU torch tensors, with the host kernels in place of the CUDA ones."""

    def __init__(self) -> None:
        super().__init__(torch.device("cpu"))
        self.puts = 0

    def _put(self, a: np.ndarray) -> Any:
        self.puts += 1
        return super()._put(a).clone()  # a copy, as a real upload is

    def _matmul(self, a: Any, b: Any) -> Any:
        return torch.from_numpy(ring.matmul(a.numpy().view(np.uint64), b.numpy().view(np.uint64)).view(np.int64))

    def _dcf(self, party: int, key: Any, x: Any) -> Any:
        host = fss.DcfKey(*(np.asarray(v.numpy()).view(np.uint64) if v.dtype == torch.int64 else v.numpy()
                            for v in key))
        out = fss.dcf_eval(party, host, x.numpy().view(np.uint64))
        return torch.from_numpy(out.reshape(x.shape[0], -1).view(np.int64))


# ---------------------------------------------------------------- choice and errors (run everywhere)

@pytest.mark.parametrize("bad,hint", [("gpu", ""), ("cdua", "did you mean 'cuda'"), ("", "")])
def test_unknown_device_is_a_value_error_naming_the_choices(bad: str, hint: str) -> None:
    with pytest.raises(ValueError, match="use one of cpu, cuda") as err:
        resolve_device(bad)
    assert hint in str(err.value)
    with pytest.raises(ValueError, match="not an SMPC device"):
        SecureModel(_cnn(), Session(LocalDealer(), InMemoryChannel()), (1, 8, 8), device=bad or "tpu")


def test_environment_variable_chooses_and_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDFL_SMPC_DEVICE", raising=False)
    assert resolve_device() == "cpu"
    assert isinstance(Session(LocalDealer(), InMemoryChannel()).device, HostDevice)
    monkeypatch.setenv("MEDFL_SMPC_DEVICE", " CPU ")
    assert resolve_device() == "cpu"
    monkeypatch.setenv("MEDFL_SMPC_DEVICE", "cuda0")
    with pytest.raises(ValueError, match="MEDFL_SMPC_DEVICE='cuda0'.*did you mean 'cuda'"):
        Session(LocalDealer(), InMemoryChannel())
    assert resolve_device("cpu") == "cpu"  # an explicit device wins over the variable


def test_cuda_without_a_usable_gpu_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    if cuda_skip_reason() is None:
        pytest.skip("a GPU is usable here")
    monkeypatch.delenv("MEDFL_NATIVE", raising=False)
    with pytest.raises((RuntimeError, ValueError), match="cuda|CUDA|GPU") as err:
        SecureModel(_cnn(), Session(LocalDealer(), InMemoryChannel()), (1, 8, 8), device="cuda")
    assert "use 'cpu'" in str(err.value) or "MEDFL_CUDA=1" in str(err.value) or "not built" in str(err.value)


def test_cuda_with_host_kernels_forced_is_native_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend, "forced", lambda: "cpu")
    with pytest.raises(ValueError, match="MEDFL_NATIVE=cpu but a GPU array"):
        resolve_device("cuda")


# ---------------------------------------------------------------- CudaDevice plumbing on CPU tensors

def test_cuda_plumbing_is_bit_identical_and_weights_stay_resident(monkeypatch: pytest.MonkeyPatch) -> None:
    if native.native_module() is None:
        pytest.skip("medfl._native is not built")
    model = _cnn()
    want = _logits(monkeypatch, model, 16, None, "cpu", n=3)
    dev = _CpuTensorDevice()
    _seed_csprng(monkeypatch, 11)
    sm = SecureModel(model, Session(LocalDealer(), InMemoryChannel(), device=dev), (1, 16, 16))
    assert len(dev._online) == len(dev._f) == 3  # two convolutions and the linear layer, uploaded at setup
    resident = {k: v[2] for k, v in dev._online.items()}
    got = []
    for img in _images(16, 3):
        before = dev.puts
        got.append(sm(img))
        assert dev.puts - before == 3 * 2 + 6 * (1 + 6)  # per product [A0; A1] and E; per ReLU: x, 2 seeds, 4 cw
    assert all(dev._online[k][2] is t for k, t in resident.items())  # never uploaded again
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g, w)


def test_cuda_plumbing_prefetch_moves_keys_and_products_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    if native.native_module() is None:
        pytest.skip("medfl._native is not built")
    model = _cnn()
    want = _logits(monkeypatch, model, 16, None, "cpu", n=1)
    _seed_csprng(monkeypatch, 11)
    dev = _CpuTensorDevice()
    dealer = PrefetchDealer(LocalDealer(), device=dev)
    sm = SecureModel(model, Session(dealer, InMemoryChannel(), device=dev), (1, 16, 16))
    got = sm(_images(16, 1)[0])  # the recording query
    assert np.array_equal(got, want[0])
    dealer.end_query()
    for img in _images(16, 2):
        dealer.prefetch()
        assert len(dev._staged) == 6  # one pair of keys per ReLU layer, on the device before the query
        before = dev.puts
        sm(img)
        assert dev.puts - before == 3 + 6  # online: E per product, the opened points per ReLU; nothing else
        assert not dev._staged


def test_cuda_plumbing_with_prefetch_and_groupnorm(monkeypatch: pytest.MonkeyPatch) -> None:
    if native.native_module() is None:
        pytest.skip("medfl._native is not built")
    from medfl.models.cnn import cnn

    torch.manual_seed(1)  # test model weights only
    model = cnn(width=4).eval()
    torch.nn.init.normal_(model.head[2].weight, std=0.3)
    cal = calibrate(model, _images(32, 2))
    want = _logits(monkeypatch, model, 32, cal, "cpu", n=3, prefetch=True)
    dev = _CpuTensorDevice()
    got = _logits(monkeypatch, model, 32, cal, dev, n=3, prefetch=True)
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g, w)
    import gc

    gc.collect()
    assert not dev._staged  # GroupNorm's keys (evaluated by gathered rows) left the device with the host keys


@pytest.mark.slow
def test_cuda_plumbing_resnet18_groupnorm(monkeypatch: pytest.MonkeyPatch) -> None:
    if native.native_module() is None:
        pytest.skip("medfl._native is not built")
    model, cal = _resnet(64)
    want = _logits(monkeypatch, model, 64, cal, "cpu", n=1, prefetch=False)
    got = _logits(monkeypatch, model, 64, cal, _CpuTensorDevice(), n=1, prefetch=False)
    assert np.array_equal(got[0], want[0])


def test_native_cuda_dispatch_passes_pointers_in_kernel_order(monkeypatch: pytest.MonkeyPatch,
                                                              pointer_native: Any) -> None:
    """medfl.native's CUDA ring product and DCF wrappers, with CPU tensors standing in for device memory."""
    model = _cnn()
    want = _logits(monkeypatch, model, 16, None, "cpu", n=2)
    got = _logits(monkeypatch, model, 16, None, CudaDevice(torch.device("cpu")), n=2)
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g, w)
    key = fss.dcf_gen(np.arange(4, dtype=np.uint64), np.ones((4, 2), np.uint64), bits=8)[0]
    bad = [torch.from_numpy(v.view(np.int64) if v.dtype == np.uint64 else v) for v in
           (key.seed, key.s_cw[:, :7].copy(), key.v_cw, key.t_cw, key.final)]
    with pytest.raises(ValueError, match=r"key.v_cw must be uint64\(4, 7, 2\)"):
        dcf._dcf_eval_cuda(0, fss.DcfKey(*bad), torch.zeros(4, dtype=torch.int64))


# ---------------------------------------------------------------- the GPU itself

@pytest.mark.gpu
@pytest.mark.parametrize("payload", [1, 2])
def test_cuda_dcf_pair_equals_host(cuda: str, payload: int) -> None:
    rng = np.random.default_rng(3)  # test data only
    n, bits = 777, 29
    alpha = rng.integers(0, 2**bits, size=n, dtype=np.uint64)
    beta = rng.integers(0, 2**64, size=(n, payload), dtype=np.uint64)
    keys = fss.dcf_gen(alpha, beta, bits=bits)
    x = rng.integers(0, 2**bits, size=n, dtype=np.uint64)
    x[:5] = alpha[:5]
    got = smpc_device("cuda").dcf_eval_pair(keys, x)
    want = HostDevice().dcf_eval_pair(keys, x)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and np.array_equal(g, w)


@pytest.mark.gpu
def test_small_cnn_on_cuda_is_bit_identical_to_cpu(cuda: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _cnn()
    want = _logits(monkeypatch, model, 16, None, "cpu", n=3)
    got = _logits(monkeypatch, model, 16, None, "cuda", n=3)
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g, w)


@pytest.mark.gpu
@pytest.mark.parametrize("prefetch", [False, True])
def test_resnet18_groupnorm_on_cuda_is_bit_identical_to_cpu(cuda: str, monkeypatch: pytest.MonkeyPatch,
                                                            prefetch: bool) -> None:
    side = 64
    model, cal = _resnet(side)
    want = _logits(monkeypatch, model, side, cal, "cpu", n=2, prefetch=prefetch)
    got = _logits(monkeypatch, model, side, cal, "cuda", n=2, prefetch=prefetch)
    for g, w, img in zip(got, want, _images(side, 2), strict=True):
        assert np.array_equal(g, w)
        with torch.no_grad():
            plain = model(torch.from_numpy(img)[None])[0].double().numpy()
        assert np.max(np.abs(g - plain)) < 5e-2
        assert int(np.argmax(g)) == int(np.argmax(plain))
