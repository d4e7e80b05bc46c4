"""Synthetic chest X-rays: deterministic, bounded, shaped like the task, non-IID by site."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from agent.metrics import roc_auc
from medfl.data.synthetic import SiteShift, generate, hospital_shifts, write_image_folder


def test_deterministic_by_seed_and_bounded():
    a = generate(12, seed=3, image_size=48)
    b = generate(12, seed=3, image_size=48)
    c = generate(12, seed=4, image_size=48)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    images, labels = a
    assert images.shape == (12, 1, 48, 48) and images.dtype == np.float32
    assert labels.shape == (12,) and labels.dtype == np.int64 and set(labels.tolist()) <= {0, 1}
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert generate(0, seed=1)[0].shape == (0, 1, 64, 64)


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.8])
def test_class_balance_follows_the_shift(fraction):
    _, labels = generate(600, seed=1, image_size=16, shift=SiteShift(positive_fraction=fraction))
    assert labels.mean() == pytest.approx(fraction, abs=0.06)


def test_hospital_shifts_are_distinct_and_deterministic():
    shifts = hospital_shifts(4, seed=5)
    assert shifts == hospital_shifts(4, seed=5) and shifts != hospital_shifts(4, seed=6)
    assert len(set(shifts)) == 4
    for field in ("contrast", "noise_std", "positive_fraction"):
        assert len({getattr(s, field) for s in shifts}) == 4, field
    with pytest.raises(dataclasses.FrozenInstanceError):
        shifts[0].contrast = 2.0  # type: ignore[misc]


def test_sites_differ_in_image_statistics():
    stats = []
    for i, shift in enumerate(hospital_shifts(3, seed=11)):
        images, labels = generate(200, seed=20 + i, image_size=32, shift=shift)
        # per-image noise: difference between neighbouring pixels in the flat background
        noise = np.std(np.diff(images[:, 0, :4, :], axis=-1))
        stats.append((images.mean(), images.std(), noise, labels.mean()))
    stats = np.array(stats)
    spread = stats.max(axis=0) - stats.min(axis=0)
    assert spread[0] > 0.01 and spread[1] > 0.01 and spread[2] > 0.005 and spread[3] > 0.1


def test_looks_like_a_chest_and_positives_have_lung_opacities():
    images, labels = generate(400, seed=2, image_size=64, shift=SiteShift(noise_std=0.0))
    mean = images[:, 0].mean(axis=0)
    lung, spine, outside = mean[28, 20], mean[28, 32], mean[28, 1]
    assert lung < spine and outside < lung  # dark lungs in a bright thorax, darker air outside
    lungs = images[:, 0, 14:50, 8:26].mean(axis=(1, 2)) + images[:, 0, 14:50, 38:56].mean(axis=(1, 2))
    gap = lungs[labels == 1].mean() - lungs[labels == 0].mean()
    assert gap > 0.01  # opacities raise lung density on average ...
    assert roc_auc(labels, lungs) < 0.95  # ... but lung brightness alone does not separate the classes


def test_site_shifts_confound_a_brightness_shortcut():
    feats, labels = [], []
    for i, shift in enumerate(hospital_shifts(3, seed=11)):
        x, y = generate(200, seed=30 + i, image_size=64, shift=shift)
        feats.append(x[:, 0, 14:50, 8:26].mean(axis=(1, 2)) + x[:, 0, 14:50, 38:56].mean(axis=(1, 2)))
        labels.append(y)
    within = np.mean([roc_auc(y, f) for f, y in zip(feats, labels, strict=True)])
    pooled = roc_auc(np.concatenate(labels), np.concatenate(feats))
    assert pooled < within - 0.1


def test_write_image_folder_layout(tmp_path):
    root = write_image_folder(tmp_path / "site", n_train=10, n_val=4, n_test=0, seed=1, image_size=32,
                              shift=SiteShift(positive_fraction=0.5))
    assert sorted(p.name for p in root.iterdir()) == ["train", "val"]
    files = sorted(root.glob("*/*/*.png"))
    assert len(files) == 14
    assert {p.parent.name for p in files} <= {"NORMAL", "PNEUMONIA"}
    with Image.open(files[0]) as im:
        assert im.mode == "L" and im.size == (32, 32)


def test_bad_arguments():
    with pytest.raises(ValueError, match="image_size"):
        generate(2, seed=0, image_size=8)
    with pytest.raises(ValueError, match="n >= 0"):
        generate(-1, seed=0)
