"""Synthetic chest X-rays: deterministic, bounded, non-IID across sites."""

from __future__ import annotations

import numpy as np
import pytest

from medfl.data.synthetic import SiteShift, generate, hospital_shifts, write_image_folder


def test_deterministic_and_bounded():
    a, la = generate(40, seed=3, image_size=48)
    b, lb = generate(40, seed=3, image_size=48)
    c, _ = generate(40, seed=4, image_size=48)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(a, c)
    assert a.shape == (40, 1, 48, 48) and a.dtype == np.float32 and la.dtype == np.int64
    assert a.min() >= 0 and a.max() <= 1


def test_class_balance_follows_the_site():
    _, labels = generate(2000, seed=1, image_size=16, shift=SiteShift(positive_fraction=0.2))
    assert abs(labels.mean() - 0.2) < 0.03


def test_sites_differ():
    shifts = hospital_shifts(3, seed=7)
    assert len(set(shifts)) == 3
    means = [generate(200, seed=i, image_size=32, shift=s)[0].mean() for i, s in enumerate(shifts)]
    noise = [s.noise_std for s in shifts]
    assert max(means) - min(means) > 0.01 or max(noise) - min(noise) > 0.01
    assert len({round(s.positive_fraction, 2) for s in shifts}) == 3


def test_positives_are_brighter_in_the_lungs():
    images, labels = generate(400, seed=5, image_size=64)
    lungs = images[:, 0, 16:48, 8:24].mean(axis=(1, 2))  # left lung field
    assert lungs[labels == 1].mean() > lungs[labels == 0].mean()


def test_write_image_folder(tmp_path):
    root = write_image_folder(tmp_path / "d", n_train=20, n_val=6, n_test=0, seed=1, image_size=32)
    pngs = sorted(p.relative_to(root).parts[:2] for p in root.rglob("*.png"))
    assert {p for p in pngs} <= {("train", "NORMAL"), ("train", "PNEUMONIA"), ("val", "NORMAL"),
                                 ("val", "PNEUMONIA")}
    assert len(pngs) == 26 and not (root / "test").exists()


def test_bad_arguments():
    with pytest.raises(ValueError, match="image_size"):
        generate(3, seed=0, image_size=8)
