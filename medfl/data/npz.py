"""MedMNIST-style .npz files: train/val/test images (uint8) and labels in one archive.

References
----------
.. [1] Yang et al., "MedMNIST v2: A large-scale lightweight benchmark for 2D and 3D biomedical
   image classification", Scientific Data 10, 2023 (the archive layout).
"""

from __future__ import annotations

import pathlib

import numpy as np

from medfl.errors import DataError

__all__ = ["load_npz_splits"]


def _to_gray(images: np.ndarray, path: pathlib.Path) -> np.ndarray:
    if images.dtype != np.uint8:
        raise DataError(f"{path}: images must be uint8 (0-255) as in MedMNIST, got dtype {images.dtype}")
    if images.ndim == 4 and images.shape[-1] in (1, 3):
        images = images.astype(np.float32).mean(axis=-1) if images.shape[-1] == 3 else images[..., 0]
    if images.ndim != 3:
        raise DataError(f"{path}: images must be (N,H,W) or (N,H,W,C), got shape {images.shape}")
    return images.astype(np.float32) / 255.0


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    if images.shape[1:] == (size, size):
        return images
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(images[:, None])
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()


def load_npz_splits(path: pathlib.Path, image_size: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read ``{split}_images`` / ``{split}_labels`` for train, val and test (train required).

    Parameters
    ----------
    path : Path
        The .npz file.
    image_size : int
        Side in pixels after resizing.
    """
    path = pathlib.Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path} as .npz: {exc}") from None
    out = {}
    with archive:
        if "train_images" not in archive or "train_labels" not in archive:
            raise DataError(f"{path} lacks train_images/train_labels (has {sorted(archive.files)})")
        for split in ("train", "val", "test"):
            if f"{split}_images" not in archive:
                continue
            if f"{split}_labels" not in archive:
                raise DataError(f"{path} has {split}_images but no {split}_labels")
            images = _to_gray(archive[f"{split}_images"], path)
            raw = np.asarray(archive[f"{split}_labels"])
            whole = raw.dtype.kind in "uib" or (raw.dtype.kind == "f" and np.all(np.mod(raw, 1) == 0))
            if not (raw.ndim == 1 or (raw.ndim == 2 and raw.shape[1] == 1)) or not whole:
                raise DataError(f"{path}: {split}_labels must be whole numbers of shape (N,) or (N, 1), "
                                f"got {raw.dtype} of shape {raw.shape}")
            labels = raw.reshape(-1).astype(np.int64)
            if labels.shape[0] != images.shape[0]:
                raise DataError(f"{path}: {split} has {images.shape[0]} images but {labels.shape[0]} labels")
            if not set(np.unique(labels).tolist()) <= {0, 1}:
                raise DataError(f"{path}: {split} labels must be binary 0/1, got values {np.unique(labels)[:10]}")
            out[split] = (_resize(images, image_size)[:, None].astype(np.float32), labels)
    return out
