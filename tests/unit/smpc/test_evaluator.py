"""A whole CNN (conv, ReLU, max-pool, avg-pool, linear) on shares vs plaintext; the model server's view."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from medfl.errors import RingOverflowError
from medfl.models.cnn import cnn
from medfl.smpc import InMemoryChannel, LocalDealer
from medfl.smpc.engine.layers import Session
from medfl.smpc.evaluator import SecureModel, calibrate


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)  # test model weights only, not protocol randomness
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(0.2), nn.Linear(32, 2)).eval()


def test_whole_cnn_logits_within_bound_and_decisions_identical() -> None:
    model = _cnn()
    ch = InMemoryChannel()
    sm = SecureModel(model, Session(LocalDealer(), ch), (1, 16, 16))
    rng = np.random.default_rng(3)
    for _ in range(3):
        img = rng.normal(size=(1, 16, 16)).astype(np.float32)
        got = sm(img)
        want = model(torch.from_numpy(img)[None])[0].detach().double().numpy()
        assert np.max(np.abs(got - want)) < 1e-2
        assert int(np.argmax(got)) == int(np.argmax(want))


def test_unsupported_layer_refused_by_name_and_groupnorm_needs_calibration() -> None:
    with pytest.raises(NotImplementedError, match="Sigmoid"):
        SecureModel(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Sigmoid()), Session(LocalDealer(), InMemoryChannel()),
                    (1, 8, 8))
    with pytest.raises(ValueError, match="calibration"):
        SecureModel(nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4)), Session(LocalDealer(), InMemoryChannel()),
                    (1, 8, 8))


def test_medfl_cnn_with_groupnorm_vs_plaintext_and_range_refusal() -> None:
    torch.manual_seed(1)  # test model weights only
    model = cnn(width=4).eval()
    torch.nn.init.normal_(model.head[2].weight, std=0.3)  # the zero-initialised head would make logits trivial
    rng = np.random.default_rng(4)
    calib_imgs = [rng.normal(size=(1, 64, 64)).astype(np.float32) for _ in range(4)]
    cal = calibrate(model, calib_imgs)
    sm = SecureModel(model, Session(LocalDealer(), InMemoryChannel()), (1, 64, 64), cal)
    img = rng.normal(size=(1, 64, 64)).astype(np.float32)
    got = sm(img)
    with torch.no_grad():
        want = model(torch.from_numpy(img)[None])[0].double().numpy()
    assert np.max(np.abs(got - want)) < 5e-2
    assert int(np.argmax(got)) == int(np.argmax(want))
    with pytest.raises(RingOverflowError, match="calibrated"):
        sm(img * 100)


@pytest.mark.parametrize("frac_bits,bound", [(12, 6e-2), (16, 2e-3), (20, 2e-3)])
def test_fractional_bits_other_than_16_encode_weights_and_image_with_them(frac_bits: int, bound: float) -> None:
    """The session's frac_bits reach the weights and the image (a default of 16 there made every other value
    give wrong logits); above 16 bits the error floor is GroupNorm's Newton tolerance (1e-3 relative)."""
    torch.manual_seed(1)  # test model weights only
    model = cnn(width=4).eval()
    torch.nn.init.normal_(model.head[2].weight, std=0.3)
    rng = np.random.default_rng(5)
    cal = calibrate(model, [rng.normal(size=(1, 64, 64)).astype(np.float32) for _ in range(4)])
    sm = SecureModel(model, Session(LocalDealer(), InMemoryChannel(), frac_bits=frac_bits), (1, 64, 64), cal)
    img = rng.normal(size=(1, 64, 64)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(img)[None])[0].double().numpy()
    assert np.max(np.abs(sm(img) - want)) < bound


def test_groupnorm_variance_beyond_the_ring_headroom_is_refused_at_compile_time() -> None:
    torch.manual_seed(1)  # test model weights only
    model = cnn(width=4).eval()
    rng = np.random.default_rng(6)
    cal = calibrate(model, [rng.normal(size=(1, 64, 64)).astype(np.float32) for _ in range(2)])
    big = dataclasses.replace(cal, variances=tuple((lo, hi * 2.0**30) for lo, hi in cal.variances))
    with pytest.raises(RingOverflowError, match="GroupNorm #1 .* would wrap; use fewer fractional bits"):
        SecureModel(model, Session(LocalDealer(), InMemoryChannel()), (1, 64, 64), big)


def test_model_server_view_is_uniform_for_two_images() -> None:
    """Every byte party 1 receives, for two very different images: uniform bits, indistinguishable."""
    model = _cnn()
    views = []
    for img in (np.zeros((1, 16, 16), np.float32), np.full((1, 16, 16), 3.0, np.float32)):
        ch = InMemoryChannel(record=True)
        SecureModel(model, Session(LocalDealer(), ch), (1, 16, 16))(img)
        views.append(np.frombuffer(b"".join(ch.views[1]), dtype=np.uint64))
    assert views[0].size == views[1].size
    bits = [((v[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)).mean(axis=0) for v in views]
    n = views[0].size
    for b in bits:  # each bit position is a fair coin (6 sigma)
        assert np.all(np.abs(b - 0.5) < 6 * 0.5 / np.sqrt(n))
    # two-sample test on the byte histograms: chi-square with 255 dof, 1e-6 level (critical ~ 380)
    h = [np.bincount(v.view(np.uint8), minlength=256).astype(np.float64) for v in views]
    pooled = (h[0] + h[1]) / 2
    chi2 = float(np.sum((h[0] - pooled) ** 2 / pooled + (h[1] - pooled) ** 2 / pooled))
    assert chi2 < 380


def test_batchnorm_models_are_folded_then_evaluated() -> None:
    from medfl.models.resnet import BasicBlock
    from medfl.smpc.evaluator import fold_batchnorm

    torch.manual_seed(2)  # test model weights only
    blk = BasicBlock(4, 8, 2)
    blk.norm1, blk.norm2 = nn.BatchNorm2d(8), nn.BatchNorm2d(8)
    blk.shortcut = nn.Sequential(nn.Conv2d(4, 8, 1, stride=2, bias=False), nn.BatchNorm2d(8))
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), blk,
                          nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 2))
    model.train()
    with torch.no_grad():  # give the BatchNorms non-trivial running statistics
        for _ in range(3):
            model(torch.randn(8, 1, 16, 16) * 2 + 1)
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias)
    with pytest.raises(NotImplementedError, match="fold_batchnorm"):
        SecureModel(model, Session(LocalDealer(), InMemoryChannel()), (1, 16, 16))
    folded = fold_batchnorm(model)
    img = np.random.default_rng(6).normal(size=(1, 16, 16)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(img)[None])[0].double().numpy()
        assert np.allclose(folded(torch.from_numpy(img)[None])[0].double().numpy(), want, atol=1e-4)
    got = SecureModel(folded, Session(LocalDealer(), InMemoryChannel()), (1, 16, 16))(img)
    assert np.max(np.abs(got - want)) < 1e-2
