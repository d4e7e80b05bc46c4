"""MedMNIST-style .npz archives: shapes, RGB to gray, label shapes, and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medfl.data import DataSpec, load_splits
from medfl.errors import DataError


def _save(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_shapes_resize_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    path = _save(tmp_path / "pneumoniamnist.npz",
                 train_images=rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
                 train_labels=rng.integers(0, 2, (10, 1)).astype(np.uint8),
                 val_images=rng.integers(0, 256, (4, 28, 28), dtype=np.uint8), val_labels=np.array([0, 1, 1, 0]),
                 test_images=rng.integers(0, 256, (3, 28, 28), dtype=np.uint8), test_labels=np.array([[1], [0], [1]]))
    splits = load_splits(DataSpec(kind="npz", path=path, image_size=64))
    assert set(splits) == {"train", "val", "test"}
    for split, n in (("train", 10), ("val", 4), ("test", 3)):
        x, y = splits[split].tensors
        assert x.shape == (n, 1, 64, 64) and x.dtype == torch.float32 and y.shape == (n,) and y.dtype == torch.int64
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert splits["val"].tensors[1].tolist() == [0, 1, 1, 0] and splits["test"].tensors[1].tolist() == [1, 0, 1]


def test_same_size_is_not_resampled_and_rgb_becomes_gray(tmp_path):
    gray = (np.arange(16 * 16) % 256).astype(np.uint8).reshape(1, 16, 16)
    rgb = np.stack([gray[0], gray[0] // 2, np.zeros_like(gray[0])], axis=-1)[None]
    path = _save(tmp_path / "a.npz", train_images=gray, train_labels=np.array([1]),
                 val_images=rgb, val_labels=np.array([0]))
    splits = load_splits(DataSpec(kind="npz", path=path, image_size=16))
    np.testing.assert_allclose(splits["train"].tensors[0][0, 0].numpy(), gray[0] / 255.0, atol=1e-6)
    expected = (gray[0].astype(np.float32) + gray[0] // 2) / 3 / 255.0
    np.testing.assert_allclose(splits["val"].tensors[0][0, 0].numpy(), expected, atol=1e-6)


def test_val_is_carved_when_absent(tmp_path):
    path = _save(tmp_path / "a.npz", train_images=np.zeros((20, 8, 8), np.uint8), train_labels=np.arange(20) % 2)
    splits = load_splits(DataSpec(kind="npz", path=path, image_size=8))
    assert len(splits["val"]) == 3 and len(splits["train"]) == 17


IMG = np.zeros((3, 8, 8), np.uint8)


@pytest.mark.parametrize("arrays,match", [
    ({"x": np.zeros(3)}, "lacks train_images"),
    ({"train_images": IMG}, "lacks train_images/train_labels"),
    ({"train_images": IMG, "train_labels": np.zeros(2, np.int64)}, "3 images but 2 labels"),
    ({"train_images": IMG, "train_labels": np.array([0, 1, 2])}, "binary"),
    ({"train_images": IMG, "train_labels": np.zeros((3, 2), np.int64)}, r"shape \(N,\) or \(N, 1\)"),
    ({"train_images": IMG, "train_labels": np.array([0.0, 0.5, 1.0])}, "whole numbers"),
    ({"train_images": np.zeros((3, 8), np.uint8), "train_labels": np.zeros(3, np.int64)}, "shape"),
    ({"train_images": IMG.astype(np.float64), "train_labels": np.zeros(3, np.int64)}, "uint8"),
    ({"train_images": IMG, "train_labels": np.zeros(3, np.int64), "val_images": IMG}, "no val_labels"),
])
def test_errors(tmp_path, arrays, match):
    path = _save(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=match):
        load_splits(DataSpec(kind="npz", path=path, image_size=16))


def test_unreadable_files(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match="cannot read"):
        load_splits(DataSpec(kind="npz", path=tmp_path / "junk.npz", image_size=16))
    with pytest.raises(DataError, match="cannot read"):
        load_splits(DataSpec(kind="npz", path=tmp_path / "absent.npz", image_size=16))
