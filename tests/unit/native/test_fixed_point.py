"""Fixed-point kernels against the NumPy reference, bit for bit, on every backend present.

``device`` runs each test on the native CPU kernels, on the dispatch layer forced to the NumPy
reference, and on the CUDA kernels (marked ``gpu``; skipped cleanly without a GPU).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from medfl import native
from medfl.errors import NonFiniteError, RingOverflowError
from medfl.native import backend
from medfl.native import fixed_point as fxp
from medfl.native.reference import fixed_point as fxp_ref

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("reference", id="reference"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.gpu),
]


@pytest.fixture(params=DEVICES)
def device(request, monkeypatch):
    if request.param == "cuda":
        return request.getfixturevalue("cuda")
    if request.param == "cpu" and native.native_module() is None:
        pytest.fail("medfl._native is not built; run 'make install'")
    if request.param == "reference":
        monkeypatch.setattr(backend, "forced", lambda: "reference")
    assert native.active_backend() == request.param
    return request.param


def to_dev(a: np.ndarray, device: str):
    if device != "cuda":
        return a
    import torch

    return torch.from_numpy(np.ascontiguousarray(a)).cuda()


def to_host(a) -> np.ndarray:
    return a if isinstance(a, np.ndarray) else a.cpu().numpy()


def rand(n: int, seed: int, scale: float = 10.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)


@pytest.mark.parametrize("n", [0, 1, 7, 1000, 1_000_003])
@pytest.mark.parametrize("ring_bits,frac_bits", [(32, 0), (32, 16), (32, 30), (64, 16), (64, 40), (64, 62)])
@pytest.mark.parametrize("rounding,seed", [("nearest", 0), ("stochastic", 12345), ("stochastic", 2**64 - 1)])
def test_encode_matches_reference(device, n, ring_bits, frac_bits, rounding, seed):
    scale = min(1000.0, fxp.max_abs_for(frac_bits, ring_bits) / 8)
    x = rand(n, n + frac_bits, scale)
    ref = fxp_ref.encode_reference(x, frac_bits=frac_bits, ring_bits=ring_bits, rounding=rounding, seed=seed, offset=3)
    got = to_host(fxp.encode(to_dev(x, device), frac_bits=frac_bits, ring_bits=ring_bits, rounding=rounding,
                             seed=seed, offset=3))
    assert got.dtype == ref.dtype and got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)
    dec = to_host(fxp.decode(to_dev(got, device), frac_bits=frac_bits))
    assert dec.dtype == np.float32
    np.testing.assert_array_equal(dec, fxp_ref.decode_reference(ref, frac_bits=frac_bits))


def test_uniforms_are_the_specified_splitmix64_values():
    def mix64(z: int) -> int:
        mask = 2**64 - 1
        z ^= z >> 30
        z = (z * 0xBF58476D1CE4E5B9) & mask
        z ^= z >> 27
        z = (z * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    for seed, offset in [(0, 0), (2**64 - 1, 5), (123456789, 2**63 + 17)]:
        expected = [(mix64((seed + (offset + i + 1) * 0x9E3779B97F4A7C15) % 2**64) >> 11) * 2.0**-53
                    for i in range(64)]
        ref = fxp_ref.uniforms_reference(seed, offset, 64)
        np.testing.assert_array_equal(ref, np.array(expected))
        mod = native.native_module()
        if mod is not None:
            got = np.empty(100_001)
            mod.uniforms(got, seed, offset)
            np.testing.assert_array_equal(got, fxp_ref.uniforms_reference(seed, offset, got.size))


def test_edge_values(device):
    x = np.array([0.0, -0.0, 0.5, 1.5, 2.5, -0.5, -1.5, 1e-30, -1e-30, 3.0, -3.0, 1e-45, -1e-45], np.float32)
    for rounding in ("nearest", "stochastic"):
        for ring_bits, f in ((32, 0), (64, 20), (64, 61)):
            ref = fxp_ref.encode_reference(x, frac_bits=f, ring_bits=ring_bits, rounding=rounding, seed=9)
            got = to_host(fxp.encode(to_dev(x, device), frac_bits=f, ring_bits=ring_bits, rounding=rounding, seed=9))
            np.testing.assert_array_equal(got, ref)
    near = to_host(fxp.encode(to_dev(x, device), frac_bits=0, ring_bits=32))
    assert list(near.view(np.int32)[:7]) == [0, 0, 0, 2, 2, 0, -2]  # half to even, -0.0 -> 0
    zeros = to_host(fxp.encode(to_dev(np.array([0.0, -0.0], np.float32), device), frac_bits=62, ring_bits=64,
                               rounding="stochastic", seed=1))
    assert list(zeros) == [0, 0]


@pytest.mark.parametrize("ring_bits,frac_bits", [(32, 16), (64, 16), (32, 0), (32, 30), (64, 62)])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_range_edge(device, ring_bits, frac_bits, rounding):
    limit = 2.0 ** (ring_bits - 1 - frac_bits)
    below = np.nextafter(np.float32(limit), np.float32(0))
    ok = np.array([below, -limit, -below], np.float32)
    got = to_host(fxp.encode(to_dev(ok, device), frac_bits=frac_bits, ring_bits=ring_bits, rounding=rounding))
    np.testing.assert_array_equal(got, fxp_ref.encode_reference(ok, frac_bits=frac_bits, ring_bits=ring_bits,
                                                            rounding=rounding))
    assert got[1] == 2 ** (ring_bits - 1)  # -2^(k-1), the most negative element
    for bad in (limit, -np.nextafter(np.float32(limit), np.float32(np.inf)), 3e38, -3e38):
        x = np.array([0.5, -1.0, bad, 0.0, bad], np.float32)
        with pytest.raises(RingOverflowError, match="flat index 2") as info:
            fxp.encode(to_dev(x, device), frac_bits=frac_bits, ring_bits=ring_bits, rounding=rounding)
        assert str(limit) in str(info.value) and repr(float(np.float32(bad))) in str(info.value)
        with pytest.raises(RingOverflowError, match="flat index 2"):
            fxp_ref.encode_reference(x, frac_bits=frac_bits, ring_bits=ring_bits, rounding=rounding)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_non_finite_rejected(device, bad, rounding):
    x = np.zeros(100_001, np.float32)
    x[51_700] = bad
    x[90_000] = bad
    x[90_001] = 1e30  # an overflow after the first non-finite value
    with pytest.raises(NonFiniteError, match="flat index 51700\\b") as info:
        fxp.encode(to_dev(x, device), frac_bits=16, ring_bits=64, rounding=rounding)
    assert str(float(bad)) in str(info.value)
    x[3] = 1e30  # an overflow *before* the non-finite value: non-finite still wins
    with pytest.raises(NonFiniteError, match="flat index 51700\\b"):
        fxp.encode(to_dev(x, device), frac_bits=16, ring_bits=64, rounding=rounding)
    with pytest.raises(NonFiniteError, match="flat index 51700\\b"):
        fxp_ref.encode_reference(x, frac_bits=16, ring_bits=64, rounding=rounding)


def test_non_contiguous_and_multidimensional(device):
    base = rand(60 * 70, 1).reshape(60, 70)
    cube = rand(4 * 5 * 6, 2).reshape(4, 5, 6)
    for arr in (base, cube):
        ref = fxp_ref.encode_reference(arr, frac_bits=12, ring_bits=32, rounding="stochastic", seed=4)
        got = to_host(fxp.encode(to_dev(arr, device), frac_bits=12, ring_bits=32, rounding="stochastic", seed=4))
        assert got.shape == arr.shape
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(to_host(fxp.decode(to_dev(got, device), frac_bits=12)),
                                      fxp_ref.decode_reference(ref, frac_bits=12))
    if device == "cuda":
        import torch

        with pytest.raises(ValueError, match="contiguous"):
            fxp.encode(torch.from_numpy(base).cuda().T, frac_bits=12, ring_bits=32)
        return
    for view in (base[::2, ::3], base.T, base[:, 5], cube.transpose(2, 0, 1)[:, ::-1]):
        ref = fxp_ref.encode_reference(np.ascontiguousarray(view), frac_bits=12, ring_bits=32, rounding="stochastic",
                                   seed=4)
        got = fxp.encode(view, frac_bits=12, ring_bits=32, rounding="stochastic", seed=4)
        assert got.shape == view.shape and got.flags.c_contiguous
        np.testing.assert_array_equal(got, ref)
    enc = fxp.encode(base, frac_bits=12, ring_bits=64)
    np.testing.assert_array_equal(fxp.decode(enc.T, frac_bits=12), fxp_ref.decode_reference(enc.T.copy(), frac_bits=12))
    stack = np.stack([enc.ravel(), enc.ravel()], axis=1).T[:, ::3]  # non-contiguous (2, n) rows
    np.testing.assert_array_equal(fxp.ring_sum(stack), fxp_ref.ring_sum_reference(np.ascontiguousarray(stack)))


def test_chunked_encode_equals_whole(device):
    x = rand(10_001, 2)
    whole = to_host(fxp.encode(to_dev(x, device), frac_bits=20, ring_bits=64, rounding="stochastic", seed=77))
    parts = [to_host(fxp.encode(to_dev(x[i:i + 999], device), frac_bits=20, ring_bits=64, rounding="stochastic",
                                seed=77, offset=i)) for i in range(0, x.size, 999)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    huge = to_host(fxp.encode(to_dev(x[:10], device), frac_bits=20, ring_bits=64, rounding="stochastic", seed=77,
                              offset=2**64 - 3))  # the counter wraps modulo 2^64
    np.testing.assert_array_equal(huge, fxp_ref.encode_reference(x[:10], frac_bits=20, ring_bits=64,
                                                             rounding="stochastic", seed=77, offset=2**64 - 3))


@pytest.mark.parametrize("ring_bits,frac_bits", [(32, 8), (32, 16), (64, 16), (64, 32)])
def test_nearest_round_trip_error_bound(device, ring_bits, frac_bits):
    x = rand(100_000, 3, 100.0)
    enc = fxp.encode(to_dev(x, device), frac_bits=frac_bits, ring_bits=ring_bits)
    dec = to_host(fxp.decode(enc, frac_bits=frac_bits)).astype(np.float64)
    # 2^-f-1 from rounding to the grid, plus the float32 rounding of the decoded value
    assert np.all(np.abs(dec - x) <= 2.0 ** (-frac_bits - 1) + np.abs(x) * 2.0**-24)


def test_stochastic_rounding_is_unbiased(device):
    x = np.array([0.3, -1.7, 1e-3, 123.456, -0.126, 0.0], np.float32)
    f = 2
    seeds = range(1000, 3000)
    sums = np.zeros(x.size)
    for seed in seeds:
        enc = fxp.encode(to_dev(x, device), frac_bits=f, ring_bits=32, rounding="stochastic", seed=seed)
        sums += to_host(enc).view(np.int32) * 2.0**-f
    mean = sums / len(seeds)
    xs = x.astype(np.float64)
    p = xs * 2**f - np.floor(xs * 2**f)  # probability of rounding up
    sigma = 2.0**-f * np.sqrt(p * (1 - p) / len(seeds))
    assert np.all(np.abs(mean - xs) <= 6 * sigma + 1e-12), (mean, xs)
    one = to_host(fxp.encode(to_dev(np.full(100_000, 0.3, np.float32), device), frac_bits=f, ring_bits=32,
                             rounding="stochastic", seed=5))
    assert set(np.unique(one.view(np.int32))) == {1, 2}  # only the two neighbours of 1.2


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
@pytest.mark.parametrize("m,n", [(0, 3), (1, 0), (1, 5), (10, 1001), (3, 100_003)])
def test_ring_sum_wraps(device, dtype, m, n):
    info = np.iinfo(dtype)
    rows = np.random.default_rng(m * n).integers(info.max - 1000, info.max, size=(m, n), dtype=dtype, endpoint=True)
    expected = np.array([sum(int(v) for v in rows[:, j]) % 2 ** (8 * rows.itemsize) for j in range(min(n, 50))],
                        dtype=dtype)
    got = to_host(fxp.ring_sum(to_dev(rows, device)))
    assert got.dtype == dtype and got.shape == (n,)
    np.testing.assert_array_equal(got, fxp_ref.ring_sum_reference(rows))
    np.testing.assert_array_equal(got[:50], expected)
    if m == 0:
        return
    acc = rows[0].copy()
    dev_acc = to_dev(acc, device)
    result = fxp.ring_add_(dev_acc, to_dev(rows[-1], device))
    assert result is dev_acc
    np.testing.assert_array_equal(to_host(dev_acc), rows[0] + rows[-1])


def test_ring_sum_of_encodings_decodes_to_the_sum(device):
    xs = [rand(5000, s, 3.0) for s in range(7)]
    enc = [to_host(fxp.encode(to_dev(x, device), frac_bits=16, ring_bits=32, rounding="stochastic", seed=s))
           for s, x in enumerate(xs)]
    total = to_host(fxp.decode(fxp.ring_sum(to_dev(np.stack(enc), device)), frac_bits=16))
    np.testing.assert_allclose(total, np.sum(xs, axis=0), atol=7 * 2.0**-16 + 1e-5)
    acc = to_dev(np.zeros(5000, np.uint32), device)
    for e in enc:
        fxp.ring_add_(acc, to_dev(e, device))
    np.testing.assert_array_equal(to_host(acc), fxp_ref.ring_sum_reference(np.stack(enc)))


def test_argument_errors(device):
    x = to_dev(rand(10, 5), device)
    with pytest.raises(TypeError, match="float32"):
        fxp.encode(to_dev(rand(10, 5).astype(np.float64), device), frac_bits=8)
    with pytest.raises(ValueError, match="frac_bits must be in \\[0, 30\\].*got 31"):
        fxp.encode(x, frac_bits=31, ring_bits=32)
    with pytest.raises(ValueError, match="frac_bits"):
        fxp.encode(x, frac_bits=-1, ring_bits=64)
    with pytest.raises(TypeError, match="frac_bits must be an integer"):
        fxp.encode(x, frac_bits=8.0)
    with pytest.raises(ValueError, match="ring_bits must be 32 or 64, got 16"):
        fxp.encode(x, frac_bits=8, ring_bits=16)
    with pytest.raises(ValueError, match="rounding"):
        fxp.encode(x, frac_bits=8, rounding="up")
    with pytest.raises(TypeError, match="seed must be an integer"):
        fxp.encode(x, frac_bits=8, rounding="stochastic", seed=1.5)
    with pytest.raises(TypeError, match="uint32 or uint64"):
        fxp.decode(to_dev(np.zeros(3, np.int64), device), frac_bits=8)
    with pytest.raises(ValueError, match="2-D"):
        fxp.ring_sum(to_dev(np.zeros(3, np.uint32), device))
    with pytest.raises(ValueError, match="dtype"):
        fxp.ring_add_(to_dev(np.zeros(3, np.uint32), device), to_dev(np.zeros(3, np.uint64), device))
    if device != "cuda":
        with pytest.raises(TypeError, match="NumPy array"):
            fxp.encode([1.0, 2.0], frac_bits=8)
        with pytest.raises(ValueError, match="writable"):
            fxp.ring_add_(np.zeros(6, np.uint32)[::2], np.zeros(3, np.uint32))
        frozen = np.zeros(3, np.uint32)
        frozen.flags.writeable = False
        with pytest.raises(ValueError, match="writable"):
            fxp.ring_add_(frozen, np.zeros(3, np.uint32))


def test_native_module_checks_dtypes_itself():
    mod = native.native_module()
    x = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="expected dtype float32, got float64"):
        mod.encode(np.zeros(4), np.zeros(4, np.uint32), 8, False, 0, 0)
    with pytest.raises(ValueError, match="C-contiguous"):
        mod.encode(np.zeros(8, np.float32)[::2], np.zeros(4, np.uint32), 8, False, 0, 0)
    with pytest.raises(ValueError, match="sizes differ"):
        mod.encode(x, np.zeros(5, np.uint32), 8, False, 0, 0)
    with pytest.raises(ValueError, match="frac_bits must be in \\[0, 30\\], got 40"):
        mod.encode(x, np.zeros(4, np.uint32), 40, False, 0, 0)


@pytest.mark.parametrize("ring_bits,frac_bits,n", [(32, 16, 1), (32, 16, 3), (32, 0, 10), (64, 20, 10),
                                                   (64, 62, 1), (32, 30, 7)])
def test_max_abs_for_is_tight_and_safe(ring_bits, frac_bits, n):
    bound = fxp.max_abs_for(frac_bits, ring_bits, n_summands=n)
    assert float(np.float32(bound)) == bound
    x = np.full(n, bound, np.float32)
    for sign in (1, -1):
        for rounding in ("nearest", "stochastic"):
            enc = fxp.encode(sign * x, frac_bits=frac_bits, ring_bits=ring_bits, rounding=rounding, seed=3)
            total = int(enc.view(np.int32 if ring_bits == 32 else np.int64).astype(object).sum())
            assert -(2 ** (ring_bits - 1)) <= total < 2 ** (ring_bits - 1)
    nxt = float(np.nextafter(np.float32(bound), np.float32(np.inf)))
    assert n * math.ceil(nxt * 2.0**frac_bits) >= 2 ** (ring_bits - 1)  # the next float32 can wrap
    with pytest.raises(ValueError, match="n_summands"):
        fxp.max_abs_for(frac_bits, ring_bits, n_summands=0)


@settings(max_examples=60, deadline=None)
@given(x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=12),
                    elements=st.floats(-1000, 1000, width=32)),
       f=st.integers(0, 20), seed=st.integers(0, 2**64 - 1), offset=st.integers(0, 2**64 - 1),
       k=st.sampled_from([32, 64]), rounding=st.sampled_from(["nearest", "stochastic"]))
def test_round_trip_property(x, f, seed, offset, k, rounding):
    enc = fxp.encode(x, frac_bits=f, ring_bits=k, rounding=rounding, seed=seed, offset=offset)
    np.testing.assert_array_equal(enc, fxp_ref.encode_reference(x, frac_bits=f, ring_bits=k, rounding=rounding,
                                                            seed=seed, offset=offset))
    dec = fxp.decode(enc, frac_bits=f)
    assert dec.shape == x.shape
    np.testing.assert_array_equal(dec, fxp_ref.decode_reference(enc, frac_bits=f))
    bound = 2.0**-f if rounding == "stochastic" else 2.0 ** (-f - 1)
    assert np.all(np.abs(dec.astype(np.float64) - x) <= bound + np.abs(x) * 2.0**-23)


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
@pytest.mark.parametrize("frac_bits", [0, 13, 30])
def test_decode_full_range_matches_reference(device, dtype, frac_bits):
    info = np.iinfo(dtype)
    v = np.random.default_rng(frac_bits).integers(0, info.max, size=200_003, dtype=dtype, endpoint=True)
    v[:6] = [0, 1, info.max, info.max // 2, info.max // 2 + 1, 2**31]  # 0, 1, -1, max, min, 2^31
    got = to_host(fxp.decode(to_dev(v, device), frac_bits=frac_bits))
    np.testing.assert_array_equal(got, fxp_ref.decode_reference(v, frac_bits=frac_bits))


def test_large_and_small_values_mixed_in_one_block(device):
    x = rand(70_000, 11, 1.0)
    x[::1000] = 3.5e3  # |y| above 2^51 at f = 40: the exact path, mixed with the vectorised one
    x[7::1000] = -3.9e3
    for rounding in ("nearest", "stochastic"):
        got = to_host(fxp.encode(to_dev(x, device), frac_bits=40, ring_bits=64, rounding=rounding, seed=2))
        np.testing.assert_array_equal(got, fxp_ref.encode_reference(x, frac_bits=40, ring_bits=64, rounding=rounding,
                                                                seed=2))
