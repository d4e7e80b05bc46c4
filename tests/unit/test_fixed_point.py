"""Fixed-point kernels against the NumPy reference, bit for bit, on every backend present."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from medfl import fixed_point as fxp
from medfl import native
from medfl.errors import NonFiniteError, RingOverflowError


def _cuda_available() -> bool:
    mod = native.native_module()
    if mod is None or not mod.build_info()["cuda"] or mod.cuda_device_count() == 0:
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.gpu),
]


@pytest.fixture(params=DEVICES)
def device(request):
    if request.param == "cuda" and not _cuda_available():
        pytest.skip("no CUDA device, or medfl._native built without CUDA")
    if request.param == "cpu" and native.native_module() is None:
        pytest.skip("medfl._native is not built")
    return request.param


def to_dev(a: np.ndarray, device: str):
    if device == "cpu":
        return a
    import torch

    return torch.from_numpy(np.ascontiguousarray(a)).cuda()


def to_host(a) -> np.ndarray:
    return a if isinstance(a, np.ndarray) else a.cpu().numpy()


def rand(n: int, seed: int, scale: float = 10.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)


@pytest.mark.parametrize("n", [0, 1, 7, 1000, 1_000_003])
@pytest.mark.parametrize("ring_bits,frac_bits", [(32, 0), (32, 16), (32, 24), (64, 16), (64, 40)])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_encode_matches_reference(device, n, ring_bits, frac_bits, rounding):
    scale = min(1000.0, fxp.max_abs_for(frac_bits, ring_bits) / 8)
    x = rand(n, n + frac_bits, scale)
    ref = fxp.encode_reference(x, frac_bits=frac_bits, ring_bits=ring_bits, rounding=rounding, seed=12345, offset=3)
    got = to_host(fxp.encode(to_dev(x, device), frac_bits=frac_bits, ring_bits=ring_bits, rounding=rounding,
                             seed=12345, offset=3))
    assert got.dtype == ref.dtype and got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)
    dec = to_host(fxp.decode(to_dev(got, device), frac_bits=frac_bits))
    np.testing.assert_array_equal(dec, fxp.decode_reference(ref, frac_bits=frac_bits))


def test_edge_values(device):
    x = np.array([0.0, -0.0, 0.5, 1.5, 2.5, -0.5, -1.5, 1e-30, -1e-30, 3.0, -3.0], np.float32)
    for rounding in ("nearest", "stochastic"):
        ref = fxp.encode_reference(x, frac_bits=0, ring_bits=32, rounding=rounding, seed=9)
        got = to_host(fxp.encode(to_dev(x, device), frac_bits=0, ring_bits=32, rounding=rounding, seed=9))
        np.testing.assert_array_equal(got, ref)
    near = to_host(fxp.encode(to_dev(x, device), frac_bits=0, ring_bits=32))
    assert list(near.view(np.int32)[:7]) == [0, 0, 0, 2, 2, 0, -2]  # half to even


@pytest.mark.parametrize("ring_bits,frac_bits", [(32, 16), (64, 16), (32, 0)])
def test_range_edge(device, ring_bits, frac_bits):
    limit = 2.0 ** (ring_bits - 1 - frac_bits)
    below = np.nextafter(np.float32(limit), np.float32(0))
    ok = np.array([below, -limit], np.float32)
    got = to_host(fxp.encode(to_dev(ok, device), frac_bits=frac_bits, ring_bits=ring_bits))
    np.testing.assert_array_equal(got, fxp.encode_reference(ok, frac_bits=frac_bits, ring_bits=ring_bits))
    for bad in (limit, -np.nextafter(np.float32(limit), np.float32(np.inf)), 3e38):
        x = np.array([1.0, 2.0, bad, 0.0], np.float32)
        with pytest.raises(RingOverflowError, match="flat index 2") as info:
            fxp.encode(to_dev(x, device), frac_bits=frac_bits, ring_bits=ring_bits)
        assert str(limit) in str(info.value)
        with pytest.raises(RingOverflowError, match="flat index 2"):
            fxp.encode_reference(x, frac_bits=frac_bits, ring_bits=ring_bits)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rejected(device, bad):
    x = np.zeros(1001, np.float32)
    x[517] = bad
    x[900] = bad
    for rounding in ("nearest", "stochastic"):
        with pytest.raises(NonFiniteError, match="flat index 517"):
            fxp.encode(to_dev(x, device), frac_bits=16, ring_bits=64, rounding=rounding)
    with pytest.raises(NonFiniteError, match="flat index 517"):
        fxp.encode_reference(x, frac_bits=16, ring_bits=64)


def test_non_contiguous_and_multidimensional():
    base = rand(60 * 70, 1).reshape(60, 70)
    for view in (base[::2, ::3], base.T, base[:, 5]):
        ref = fxp.encode_reference(np.ascontiguousarray(view), frac_bits=12, ring_bits=32, rounding="stochastic",
                                   seed=4)
        got = fxp.encode(view, frac_bits=12, ring_bits=32, rounding="stochastic", seed=4)
        assert got.shape == view.shape
        np.testing.assert_array_equal(got, ref)
    enc = fxp.encode(base, frac_bits=12, ring_bits=64)
    np.testing.assert_array_equal(fxp.decode(enc.T, frac_bits=12), fxp.decode_reference(enc.T.copy(), frac_bits=12))


def test_chunked_encode_equals_whole():
    x = rand(10_001, 2)
    whole = fxp.encode(x, frac_bits=20, ring_bits=64, rounding="stochastic", seed=77)
    parts = [fxp.encode(x[i:i + 999], frac_bits=20, ring_bits=64, rounding="stochastic", seed=77, offset=i)
             for i in range(0, x.size, 999)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_nearest_round_trip_error_bound():
    x = rand(100_000, 3, 100.0)
    for f in (8, 16):
        err = np.abs(fxp.decode(fxp.encode(x, frac_bits=f, ring_bits=64), frac_bits=f).astype(np.float64) - x)
        assert err.max() <= 2.0 ** (-f - 1) + np.abs(x).max() * 2.0 ** -24


def test_stochastic_rounding_is_unbiased():
    x = np.full(200_000, 0.3, np.float32)
    vals = fxp.decode(fxp.encode(x, frac_bits=2, ring_bits=32, rounding="stochastic", seed=2024), frac_bits=2)
    assert set(np.unique(vals)) == {0.25, 0.5}
    x64 = np.float64(np.float32(0.3))
    p = (x64 * 4 - 1)  # probability of rounding up
    assert abs(vals.astype(np.float64).mean() - x64) < 5 * 0.25 * np.sqrt(p * (1 - p) / x.size)
    other = fxp.encode(x, frac_bits=2, ring_bits=32, rounding="stochastic", seed=2025)
    assert not np.array_equal(other, fxp.encode(x, frac_bits=2, ring_bits=32, rounding="stochastic", seed=2024))


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
@pytest.mark.parametrize("m,n", [(1, 0), (1, 5), (10, 1001), (3, 100_003)])
def test_ring_sum_wraps(device, dtype, m, n):
    info = np.iinfo(dtype)
    rows = np.random.default_rng(m * n).integers(info.max - 1000, info.max, size=(m, n), dtype=dtype, endpoint=True)
    expected = np.array([sum(int(v) for v in rows[:, j]) % 2 ** (8 * rows.itemsize) for j in range(min(n, 50))],
                        dtype=dtype)
    got = to_host(fxp.ring_sum(to_dev(rows, device)))
    np.testing.assert_array_equal(got, fxp.ring_sum_reference(rows))
    np.testing.assert_array_equal(got[:50], expected)
    acc = rows[0].copy()
    dev_acc = to_dev(acc, device)
    fxp.ring_add_(dev_acc, to_dev(rows[-1], device))
    np.testing.assert_array_equal(to_host(dev_acc), rows[0] + rows[-1])


def test_argument_errors():
    x = rand(10, 5)
    with pytest.raises(TypeError, match="float32"):
        fxp.encode(x.astype(np.float64), frac_bits=8)
    with pytest.raises(ValueError, match="frac_bits"):
        fxp.encode(x, frac_bits=31, ring_bits=32)
    with pytest.raises(ValueError, match="ring_bits"):
        fxp.encode(x, frac_bits=8, ring_bits=16)
    with pytest.raises(ValueError, match="rounding"):
        fxp.encode(x, frac_bits=8, rounding="up")
    with pytest.raises(TypeError, match="uint32 or uint64"):
        fxp.decode(np.zeros(3, np.int64), frac_bits=8)
    with pytest.raises(ValueError, match="2-D"):
        fxp.ring_sum(np.zeros(3, np.uint32))
    with pytest.raises(ValueError, match="dtype"):
        fxp.ring_add_(np.zeros(3, np.uint32), np.zeros(3, np.uint64))
    with pytest.raises(ValueError, match="writable"):
        fxp.ring_add_(np.zeros(6, np.uint32)[::2], np.zeros(3, np.uint32))
    assert fxp.max_abs_for(16, 32, n_summands=4) < 2 ** 15 / 4


@settings(max_examples=60, deadline=None)
@given(x=hnp.arrays(np.float32, st.integers(0, 300),
                    elements=st.floats(-1000, 1000, width=32, allow_nan=False, allow_infinity=False)),
       f=st.integers(0, 20), seed=st.integers(0, 2**64 - 1), k=st.sampled_from([32, 64]),
       rounding=st.sampled_from(["nearest", "stochastic"]))
def test_round_trip_property(x, f, seed, k, rounding):
    enc = fxp.encode(x, frac_bits=f, ring_bits=k, rounding=rounding, seed=seed)
    np.testing.assert_array_equal(enc, fxp.encode_reference(x, frac_bits=f, ring_bits=k, rounding=rounding,
                                                            seed=seed))
    dec = fxp.decode(enc, frac_bits=f).astype(np.float64)
    bound = 2.0 ** -f if rounding == "stochastic" else 2.0 ** (-f - 1)
    assert np.all(np.abs(dec - x) <= bound + np.abs(x) * 2.0 ** -23)
