"""csrc/privacy kernels (C++ and, marked gpu, CUDA) against their torch references.

Random and edge-case inputs: zeros, huge values, odd sizes, sizes beyond one work chunk,
non-contiguous views, NaN/inf (refused by clip_factors), float32 and float64. The whole clipper
with the native kernels is compared against torch.func in test_clipping.py; here it is also run
with the kernels switched off (MEDFL_NATIVE=reference) and, on a GPU, against torch.func there.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from medfl import native
from medfl.errors import NonFiniteError
from medfl.native import backend
from medfl.native import clipping as kernels
from medfl.native.reference import clipping as kref
from medfl.privacy import GradSampleClipper

needs_native = pytest.mark.skipif(
    native.native_module() is None or not hasattr(native.native_module(), "dp_row_sqnorms"),
    reason="medfl._native with the privacy kernels is not built")

SHAPES = [(1, 1), (1, 5), (7, 1), (7, 1001), (3, 40_000), (64, 33)]
DTYPES = [torch.float32, torch.float64]


def _tol(dtype: torch.dtype) -> dict[str, float]:
    return {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}


def _rand(shape: tuple[int, ...], dtype: torch.dtype, seed: int, device: str = "cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype).to(device)


@needs_native
def test_cpu_backend_is_native():
    assert kernels.backend(torch.zeros(2, dtype=torch.float32)) == "cpu"
    assert kernels.backend(torch.zeros(2, dtype=torch.float16)) == "reference"


@needs_native
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_row_sqnorms_matches_reference(shape, dtype):
    x = _rand(shape, dtype, 1)
    got = kernels.row_sqnorms(x)
    assert got.dtype == torch.float64 and got.shape == (shape[0],)
    torch.testing.assert_close(got, kref.row_sqnorms_reference(x), rtol=1e-12, atol=0.0)


@needs_native
def test_row_sqnorms_edges():
    z = torch.zeros(5, 17)
    assert torch.equal(kernels.row_sqnorms(z), torch.zeros(5, dtype=torch.float64))
    huge = torch.full((2, 3), 1e20, dtype=torch.float32)  # squares overflow float32, not float64
    got = kernels.row_sqnorms(huge)
    assert bool(torch.isfinite(got).all())
    torch.testing.assert_close(got, torch.full((2,), 3 * (1e20**2), dtype=torch.float64), rtol=1e-6, atol=0.0)
    nc = _rand((9, 64), torch.float32, 2)[:, ::3]  # non-contiguous view
    assert not nc.is_contiguous()
    torch.testing.assert_close(kernels.row_sqnorms(nc), kref.row_sqnorms_reference(nc), rtol=1e-12, atol=0.0)
    x4 = _rand((4, 3, 5, 7), torch.float64, 3)  # (B, ...) is flattened per sample
    torch.testing.assert_close(kernels.row_sqnorms(x4), x4.flatten(1).pow(2).sum(1))
    nan = torch.ones(3, 4)
    nan[1, 2] = float("nan")
    got = kernels.row_sqnorms(nan)
    assert bool(torch.isnan(got[1])) and float(got[0]) == 4.0 and float(got[2]) == 4.0
    assert kernels.row_sqnorms(torch.zeros(0, 4)).shape == (0,)


@needs_native
@pytest.mark.parametrize("clip", [1e-3, 1.0, 1e4])
def test_clip_factors_matches_reference(clip):
    sq = _rand((11, 33), torch.float64, 4).abs()
    norms, f = kernels.clip_factors(sq, clip)
    rn, rf = kref.clip_factors_reference(sq, clip)
    torch.testing.assert_close(norms, rn, rtol=1e-14, atol=0.0)
    torch.testing.assert_close(f, rf, rtol=1e-14, atol=0.0)
    assert bool((f <= 1).all()) and bool((f > 0).all())


@needs_native
def test_clip_factors_refuses_nonfinite_and_bad_args():
    for bad in (float("nan"), float("inf")):
        sq = torch.ones(3, 5, dtype=torch.float64)
        sq[1, 2] = bad
        with pytest.raises(NonFiniteError, match="1 per-sample gradient norm"):
            kernels.clip_factors(sq, 1.0)
    with pytest.raises(ValueError, match="max_norm"):
        kernels.clip_factors(torch.ones(2, 2), 0.0)
    with pytest.raises(ValueError, match="layers, batch"):
        kernels.clip_factors(torch.ones(4), 1.0)
    norms, f = kernels.clip_factors(torch.zeros(2, 3), 1.0)  # zero gradients: factor 1, norm 0
    assert torch.equal(norms, torch.zeros(3, dtype=torch.float64)) and torch.equal(f, torch.ones(3,
                                                                                               dtype=torch.float64))


@needs_native
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_clipped_sum_matches_reference(shape, dtype):
    x = _rand(shape, dtype, 5)
    c = _rand((shape[0],), dtype, 6).abs()
    got = kernels.clipped_sum(x, c)
    assert got.dtype == dtype and got.shape == (shape[1],)
    torch.testing.assert_close(got, kref.clipped_sum_reference(x, c), **_tol(dtype))


@needs_native
def test_clipped_sum_edges_and_errors():
    x = _rand((6, 4, 5), torch.float64, 7)
    c = torch.linspace(0, 1, 6, dtype=torch.float64)
    torch.testing.assert_close(kernels.clipped_sum(x, c), torch.einsum("bij,b->ij", x, c))
    torch.testing.assert_close(kernels.clipped_sum(x, torch.zeros(6, dtype=torch.float64)), torch.zeros(4, 5,
                                                                                                        dtype=torch.float64))
    nc = _rand((8, 30), torch.float32, 8).t()[::2]  # non-contiguous (15, 8)
    cc = torch.ones(15)
    torch.testing.assert_close(kernels.clipped_sum(nc, cc), nc.sum(0), rtol=1e-5, atol=1e-6)
    huge = torch.full((3, 4), 1e30, dtype=torch.float32)
    torch.testing.assert_close(kernels.clipped_sum(huge, torch.full((3,), 1e-3)), torch.full((4,), 3e27))
    with pytest.raises(ValueError, match="c must have shape"):
        kernels.clipped_sum(x, torch.ones(5, dtype=torch.float64))


def _gn_cases() -> list[tuple[tuple[int, ...], int]]:
    return [((1, 1, 1, 2), 1), ((2, 6, 5, 3), 2), ((3, 8, 7, 7), 8), ((5, 16, 9, 11), 4), ((2, 32, 56, 56), 32),
            ((4, 12), 3), ((2, 6, 10), 6)]


@needs_native
@pytest.mark.parametrize("shape,groups", _gn_cases())
@pytest.mark.parametrize("dtype", DTYPES)
def test_group_norm_affine_matches_reference(shape, groups, dtype):
    a = _rand(shape, dtype, 9) * 3 + 1
    g = _rand(shape, dtype, 10)
    wg, bg = kernels.group_norm_affine(a, g, groups, 1e-5)
    rw, rb = kref.group_norm_affine_reference(a, g, groups, 1e-5)
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
    torch.testing.assert_close(wg, rw, **tol)
    torch.testing.assert_close(bg, rb, **tol)


@needs_native
@pytest.mark.parametrize("shape,groups", _gn_cases())
@pytest.mark.parametrize("dtype", DTYPES)
def test_group_norm_affine_sq_is_the_per_sample_norm(shape, groups, dtype):
    a = _rand(shape, dtype, 14) * 2 - 1
    g = _rand(shape, dtype, 15)
    wg, bg, sq = kernels.group_norm_affine_sq(a, g, groups, 1e-5)
    rw, rb = kref.group_norm_affine_reference(a, g, groups, 1e-5)
    want = kref.row_sqnorms_reference(rw) + kref.row_sqnorms_reference(rb)
    assert sq.dtype == torch.float64 and sq.shape == (shape[0],)
    torch.testing.assert_close(sq, want, rtol=1e-4 if dtype == torch.float32 else 1e-10, atol=1e-9)
    torch.testing.assert_close(sq, kernels.row_sqnorms(wg) + kernels.row_sqnorms(bg), rtol=1e-12, atol=0.0)


@needs_native
def test_group_norm_affine_edges_and_errors():
    a = torch.zeros(2, 4, 3, 3)  # constant input: xhat = 0, weight grads 0, bias grads sum(g)
    g = _rand((2, 4, 3, 3), torch.float32, 11)
    wg, bg = kernels.group_norm_affine(a, g, 2, 1e-5)
    assert torch.equal(wg, torch.zeros(2, 4))
    torch.testing.assert_close(bg, g.sum((2, 3)))
    a = _rand((3, 8, 6, 6), torch.float64, 12).transpose(2, 3)  # non-contiguous
    g = _rand((3, 8, 6, 6), torch.float64, 13)
    for got, want in zip(kernels.group_norm_affine(a, g, 4, 1e-5), kref.group_norm_affine_reference(a, g, 4, 1e-5),
                         strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="divide C"):
        kernels.group_norm_affine(torch.ones(2, 6, 3), torch.ones(2, 6, 3), 4, 1e-5)
    with pytest.raises(ValueError, match="one shape"):
        kernels.group_norm_affine(torch.ones(2, 6, 3), torch.ones(2, 6, 4), 3, 1e-5)
    with pytest.raises(ValueError, match="eps"):
        kernels.group_norm_affine(torch.ones(2, 6, 3), torch.ones(2, 6, 3), 3, -1.0)


@needs_native
def test_bindings_reject_bad_arrays():
    import numpy as np

    mod = native.native_module()
    with pytest.raises(ValueError, match="float32 or float64"):
        mod.dp_row_sqnorms(np.zeros((2, 3), np.int32), np.zeros(2), 1)
    with pytest.raises(ValueError, match="C-contiguous"):
        mod.dp_row_sqnorms(np.zeros((4, 6))[:, ::2], np.zeros(4), 1)
    with pytest.raises(ValueError, match="expected shape"):
        mod.dp_clipped_sum(np.zeros((2, 3)), np.zeros(3), np.zeros(3), False, 1)
    with pytest.raises(ValueError, match="dtypes differ"):
        mod.dp_clipped_sum(np.zeros((2, 3)), np.zeros(2, np.float32), np.zeros(3), False, 1)
    with pytest.raises(ValueError, match="read-only"):
        out = np.zeros(2)
        out.flags.writeable = False
        mod.dp_row_sqnorms(np.zeros((2, 3)), out, 1)
    with pytest.raises(ValueError, match="groups"):
        mod.dp_group_norm_affine(np.zeros((2, 6, 3)), np.zeros((2, 6, 3)), 4, 1e-5, np.zeros((2, 6)),
                                 np.zeros((2, 6)), 1)


# --------------------------------------------------------------------------------------------- #
# The whole clipper with the kernels off, and on a GPU, against torch.func.


def _cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.GroupNorm(2, 6), nn.ReLU(),
                         nn.Conv2d(6, 8, 3, stride=2), nn.GroupNorm(4, 8), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 3))


def _func_reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, c: float) -> dict[str, torch.Tensor]:
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0),
                                           reduction="sum")

    per = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in per.values()))
    f = (c / (norms + 1e-6)).clamp(max=1.0)
    return {k: torch.einsum("b...,b->...", g, f) for k, g in per.items()}


def _check_clipper(model: nn.Module, x: torch.Tensor, clip: float, rtol: float = 1e-5) -> None:
    y = torch.randint(0, 3, (x.shape[0],), generator=torch.Generator().manual_seed(3)).to(x.device) % 2
    ref = _func_reference(model, x, y, clip)
    clipper = GradSampleClipper(model, max_grad_norm=clip)
    nn.functional.cross_entropy(model(x), y, reduction="sum").backward()
    clipper.clip_and_accumulate()
    clipper.remove()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[name], rtol=rtol, atol=1e-9 * max(1.0, clip) if x.dtype == torch.float64
                                   else 1e-6 * max(1.0, clip))


@pytest.fixture
def reference_only(monkeypatch):
    monkeypatch.setenv("MEDFL_NATIVE", "reference")
    backend.dp_kernels.cache_clear()
    yield
    backend.dp_kernels.cache_clear()


@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("clip", [1e-3, 1e4])
def test_clipper_without_native_kernels(reference_only, batch, clip):
    assert kernels.backend(torch.zeros(1)) == "reference"
    torch.manual_seed(4)
    model = _cnn().double()
    _check_clipper(model, torch.randn(batch, 1, 10, 10, dtype=torch.float64), clip)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_kernels_match_reference(cuda, shape, dtype):
    x = _rand(shape, dtype, 20)
    c = _rand((shape[0],), dtype, 21).abs()
    xd, cd = x.to(cuda), c.to(cuda)
    assert kernels.backend(xd) == "cuda"
    torch.testing.assert_close(kernels.row_sqnorms(xd).cpu(), kref.row_sqnorms_reference(x), rtol=1e-12, atol=0.0)
    torch.testing.assert_close(kernels.clipped_sum(xd, cd).cpu(), kref.clipped_sum_reference(x, c), **_tol(dtype))
    sq = x.double().abs()[:, : min(shape[1], 64)].t().contiguous()
    for got, want in zip(kernels.clip_factors(sq.to(cuda), 1.0), kref.clip_factors_reference(sq, 1.0), strict=True):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-14, atol=0.0)


@pytest.mark.gpu
@pytest.mark.parametrize("shape,groups", _gn_cases())
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_group_norm_affine_matches_reference(cuda, shape, groups, dtype):
    a = _rand(shape, dtype, 22) * 3 + 1
    g = _rand(shape, dtype, 23)
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
    for got, want in zip(kernels.group_norm_affine(a.to(cuda), g.to(cuda), groups, 1e-5),
                         kref.group_norm_affine_reference(a, g, groups, 1e-5), strict=True):
        torch.testing.assert_close(got.cpu(), want, **tol)
    wg, bg, sq = kernels.group_norm_affine_sq(a.to(cuda), g.to(cuda), groups, 1e-5)
    torch.testing.assert_close(sq.cpu(), kernels.row_sqnorms(wg.cpu()) + kernels.row_sqnorms(bg.cpu()), rtol=1e-12,
                               atol=1e-300)


@pytest.mark.gpu
def test_cuda_kernels_on_a_side_stream_and_nonfinite(cuda):
    x = _rand((16, 5000), torch.float32, 24).to(cuda)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = kernels.row_sqnorms(x)
    side.synchronize()
    torch.testing.assert_close(got.cpu(), kref.row_sqnorms_reference(x.cpu()), rtol=1e-12, atol=0.0)
    sq = torch.ones(2, 4, dtype=torch.float64, device=cuda)
    sq[0, 3] = float("inf")
    with pytest.raises(NonFiniteError, match="1 per-sample"):
        kernels.clip_factors(sq, 1.0)


@pytest.mark.gpu
@pytest.mark.parametrize("name,image,batch", [("cnn", 32, 1), ("cnn", 32, 7), ("cnn", 32, 64), ("resnet18", 32, 7),
                                              ("mlp", 0, 64)])
@pytest.mark.parametrize("clip", [1e-3, 1.0, 1e4])
def test_cuda_clipper_matches_torch_func(cuda, name, image, batch, clip):
    from medfl.models.registry import create_model

    torch.manual_seed(5)
    if name == "mlp":
        model = nn.Sequential(nn.Linear(10, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 3)).double().to(cuda)
        x = torch.randn(batch, 10, dtype=torch.float64, device=cuda)
    else:
        model = create_model(name).double().eval().to(cuda)
        x = torch.randn(batch, 1, image, image, dtype=torch.float64, device=cuda)
    _check_clipper(model, x, clip)
