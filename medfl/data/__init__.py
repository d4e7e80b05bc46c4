"""Data sets on disk (image folders, MedMNIST .npz) and synthetic demo data."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch.utils.data import TensorDataset

__all__ = ["DataSpec", "load_splits"]

VAL_FRACTION = 0.15


@dataclass(frozen=True)
class DataSpec:
    """Where a hospital's data is and how to read it."""

    kind: Literal["folder", "npz"]
    path: pathlib.Path
    image_size: int = 64


def load_splits(spec: DataSpec) -> dict[str, TensorDataset]:
    """Load train/val(/test) splits; without a val split, a fixed 15% of train is held out.

    Parameters
    ----------
    spec : DataSpec
        Kind, path and image size.
    """
    if spec.kind == "folder":
        from medfl.data.folder import load_folder_splits

        raw = load_folder_splits(spec.path, spec.image_size)
    elif spec.kind == "npz":
        from medfl.data.npz import load_npz_splits

        raw = load_npz_splits(spec.path, spec.image_size)
    else:
        raise ValueError(f"unknown data kind {spec.kind!r}; use 'folder' or 'npz'")
    if "val" not in raw:
        images, labels = raw["train"]
        order = np.random.default_rng(len(labels)).permutation(len(labels))
        n_val = max(1, int(round(VAL_FRACTION * len(labels))))
        raw["val"] = (images[order[:n_val]], labels[order[:n_val]])
        raw["train"] = (images[order[n_val:]], labels[order[n_val:]])
    return {k: TensorDataset(torch.from_numpy(x), torch.from_numpy(y)) for k, (x, y) in raw.items()}
