"""Statistics of the DP noise (secure and insecure modes)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from medfl.privacy import noise


@pytest.mark.parametrize("mode", ["0", "1"])
def test_noise_scale_statistics(monkeypatch, mode, caplog):
    monkeypatch.setenv("MEDFL_INSECURE_RNG", mode)
    n, std = 200_000, 2.5
    with caplog.at_level(logging.WARNING):
        z = noise.gaussian((n,), std=std, like=torch.zeros(1, dtype=torch.float64))
    assert z.shape == (n,) and z.dtype == torch.float64
    # mean ~ N(0, std^2/n); variance estimate ~ std^2 (1 +- sqrt(2/n)); 6-sigma bounds
    assert abs(float(z.mean())) < 6 * std / math.sqrt(n)
    assert abs(float(z.var()) / std**2 - 1) < 6 * math.sqrt(2 / n)
    # fourth standardised moment of a Gaussian is 3 (var of estimate ~ 96/n)
    kurt = float(((z / z.std()) ** 4).mean())
    assert abs(kurt - 3) < 6 * math.sqrt(96 / n)
    warned = any("MEDFL_INSECURE_RNG" in r.message for r in caplog.records)
    assert warned == (mode == "1")


def test_two_draws_differ_and_odd_shapes():
    a = noise.gaussian((3, 5), std=1.0, like=torch.zeros(1))
    b = noise.gaussian((3, 5), std=1.0, like=torch.zeros(1))
    assert a.shape == (3, 5) and a.dtype == torch.float32
    assert not torch.equal(a, b)


def test_bad_std():
    with pytest.raises(ValueError, match="std"):
        noise.gaussian((2,), std=float("nan"), like=torch.zeros(1))


def test_secure_normal_is_the_keyed_chacha20_stream():
    from medfl.native.reference import secure_normal_reference as _secure_normal

    key = bytes(range(32))
    a, b = _secure_normal(1001, key=key), _secure_normal(1001, key=key)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, _secure_normal(1001, key=bytes(32)))


@pytest.mark.parametrize("n", [1, 2, 7, 10_001])
def test_device_transform_matches_the_host_one(n: int):
    """The tensor Box-Muller of the CUDA path, run on the host's own keystream bytes."""
    from medfl import csprng
    from medfl.native.noise import box_muller as _box_muller
    from medfl.native.reference import secure_normal_reference as _secure_normal

    key = bytes(range(2, 34))
    stream = torch.frombuffer(bytearray(csprng.expand(16 * ((n + 1) // 2), key=key)), dtype=torch.uint8)
    np.testing.assert_allclose(_box_muller(stream, n).numpy(), _secure_normal(n, key=key), rtol=1e-13, atol=1e-13)


@pytest.mark.gpu
@pytest.mark.parametrize("n", [1, 2, 7, 100_001])
def test_cuda_noise_is_the_host_stream(cuda: str, n: int):
    from medfl.native.noise import secure_normal_cuda as _secure_normal_cuda
    from medfl.native.reference import secure_normal_reference as _secure_normal

    key = bytes(range(1, 33))
    got = _secure_normal_cuda(n, torch.device("cuda"), key=key).cpu().numpy()
    np.testing.assert_allclose(got, _secure_normal(n, key=key), rtol=1e-12, atol=1e-12)


@pytest.mark.gpu
def test_cuda_gaussian_stays_on_the_device_with_the_right_scale(cuda: str):
    from medfl.privacy.noise import gaussian

    like = torch.zeros(1, device="cuda", dtype=torch.float32)
    z = gaussian((400_000,), std=2.5, like=like)
    assert z.is_cuda and z.dtype == torch.float32
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 2.5) < 0.02


def _native_mod():
    from medfl.native import backend

    mod = backend.dp_kernels()
    if mod is None or not hasattr(mod, "dp_gaussian_noise"):
        pytest.skip("medfl._native is not built (or MEDFL_NATIVE=reference)")
    return mod


@pytest.mark.parametrize("n", [0, 1, 2, 7, 2049, 100_003])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_noise_is_the_reference_stream(n: int, dtype: torch.dtype):
    """The CPU kernel against _secure_normal on the same key: odd sizes, one and many 16 KiB tasks."""
    from medfl.native.noise import dp_gaussian_noise as _secure_normal_native
    from medfl.native.reference import secure_normal_reference as _secure_normal

    _native_mod()
    key, std = bytes(range(5, 37)), 2.5
    got = _secure_normal_native(n, std=std, dtype=dtype, key=key)
    assert got is not None and got.shape == (n,) and got.dtype == dtype
    want = torch.from_numpy(_secure_normal(n, key=key) * std).to(dtype)
    # the same double arithmetic; only the libm of the transcendental functions may differ (an ulp or so)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=tol, atol=tol * std)


def test_native_noise_does_not_depend_on_threads_and_scales_exactly():
    mod = _native_mod()
    key = bytes(range(40, 72))
    outs = []
    for threads in (1, 2, 3):
        out = np.empty(50_001, dtype=np.float64)
        mod.dp_gaussian_noise(key, out, 1.0, threads)
        outs.append(out)
    assert all(np.array_equal(outs[0], o) for o in outs[1:])
    zero = np.full(9, 7.0)
    mod.dp_gaussian_noise(key, zero, 0.0, 1)
    assert np.all(zero == 0)


def test_native_noise_refuses_bad_arguments():
    mod = _native_mod()
    key = bytes(32)
    bad_calls = [
        (bytes(31), np.empty(4, np.float32), 1.0),          # short key
        (key, np.empty(4, np.int32), 1.0),                  # not a float array
        (key, np.empty((2, 2), np.float32), 1.0),           # not 1-D
        (key, np.empty(8, np.float32)[::2], 1.0),           # not contiguous
        (key, np.empty(4, np.float32), float("nan")),       # bad std
        (key, np.empty(4, np.float32), -1.0),
    ]
    for k, out, std in bad_calls:
        with pytest.raises(ValueError):
            mod.dp_gaussian_noise(k, out, std, 1)
    ro = np.zeros(4, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError):
        mod.dp_gaussian_noise(key, ro, 1.0, 1)
    assert np.all(ro == 0)


def test_gaussian_uses_the_native_kernel_on_the_host_unless_told_not_to(monkeypatch):
    """Same key, same numbers whichever path computes them; MEDFL_NATIVE=reference takes NumPy."""
    from medfl.native import backend
    from medfl.native import noise as native_noise
    from medfl.privacy import noise

    _native_mod()
    key = bytes(range(9, 41))
    monkeypatch.setattr(noise.csprng, "token_bytes", lambda k: key)
    real_expand = noise.csprng.expand
    monkeypatch.setattr(noise.csprng, "expand", lambda nbytes, key=None: real_expand(nbytes, key=bytes(range(9, 41))))
    fast = noise.gaussian((3, 7), std=1.5, like=torch.zeros(1, dtype=torch.float64))
    monkeypatch.setenv("MEDFL_NATIVE", "reference")
    backend.dp_kernels.cache_clear()
    try:
        assert native_noise.dp_gaussian_noise(21, std=1.5, dtype=torch.float64) is None
        slow = noise.gaussian((3, 7), std=1.5, like=torch.zeros(1, dtype=torch.float64))
    finally:
        monkeypatch.delenv("MEDFL_NATIVE")
        backend.dp_kernels.cache_clear()
    np.testing.assert_allclose(fast.numpy(), slow.numpy(), rtol=1e-12, atol=1e-12)


def test_gaussian_for_shapes_each_tensor_and_draws_once_per_run_of_device_and_dtype(monkeypatch):
    tensors = [torch.zeros(3, 4), torch.zeros(5, dtype=torch.float64), torch.zeros(0), torch.zeros(()),
               torch.zeros(7, 2), torch.zeros(2, 2, dtype=torch.float64)]
    calls = []
    real = noise.gaussian

    def counting(shape, *, std, like):
        calls.append((tuple(shape)[0], like.dtype))
        return real(shape, std=std, like=like)

    monkeypatch.setattr(noise, "gaussian", counting)
    out = list(noise.gaussian_for(tensors, std=2.0))
    assert [(z.shape, z.dtype) for z in out] == [(t.shape, t.dtype) for t in tensors]
    # one draw per run of consecutive tensors of one device and dtype
    assert calls == [(12, torch.float32), (5, torch.float64), (0 + 1 + 14, torch.float32), (4, torch.float64)]
    # slices of one draw are not copies of each other: every value differs (a continuous distribution)
    values = torch.cat([z.flatten().double() for z in out])
    assert values.numel() == sum(t.numel() for t in tensors) and torch.unique(values).numel() == values.numel()
    # a draw is cut before it passes _DRAW_MAX values; a larger tensor is a draw of its own
    monkeypatch.setattr(noise, "_DRAW_MAX", 13)
    calls.clear()
    list(noise.gaussian_for(tensors, std=1.0))
    assert calls == [(12, torch.float32), (5, torch.float64), (0 + 1, torch.float32), (14, torch.float32),
                     (4, torch.float64)]


def test_gaussian_for_holds_one_draw_at_a_time(monkeypatch):
    """Noise is drawn when asked for: a consumer that drops each piece never holds two draws."""
    monkeypatch.setattr(noise, "_DRAW_MAX", 10)
    drawn = []
    real = noise.gaussian
    monkeypatch.setattr(noise, "gaussian", lambda shape, *, std, like: drawn.append(shape) or real(shape, std=std,
                                                                                                    like=like))
    it = noise.gaussian_for([torch.zeros(6), torch.zeros(6), torch.zeros(6)], std=1.0)
    assert drawn == []
    next(it)
    assert drawn == [(6,)]
    next(it)
    assert drawn == [(6,), (6,)]


def test_gaussian_for_statistics_and_bad_std():
    params = [torch.zeros(300, 301), torch.zeros(299), torch.zeros(50_000)]
    z = torch.cat([t.flatten().double() for t in noise.gaussian_for(params, std=3.0)])
    n = z.numel()
    assert abs(float(z.mean())) < 6 * 3.0 / math.sqrt(n)
    assert abs(float(z.var()) / 9.0 - 1) < 6 * math.sqrt(2 / n)
    with pytest.raises(ValueError, match="std"):
        noise.gaussian_for(params, std=-1.0)
