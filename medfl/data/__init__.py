"""Data sets on disk (image folders, MedMNIST .npz) and synthetic demo data."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch.utils.data import TensorDataset

from medfl.errors import DataError, did_you_mean

__all__ = ["DataSpec", "load_splits"]

VAL_FRACTION = 0.15
KINDS = ("folder", "npz")


@dataclass(frozen=True)
class DataSpec:
    """Where a hospital's data is and how to read it.

    Parameters
    ----------
    kind : {"folder", "npz"}
        Image folders (class per folder, PNG/JPEG/DICOM) or a MedMNIST-style .npz archive.
    path : Path
        The folder or the .npz file (a str is converted).
    image_size : int
        Side in pixels the images are resized to.
    """

    kind: Literal["folder", "npz"]
    path: pathlib.Path
    image_size: int = 64

    def __post_init__(self) -> None:
        """Convert ``path`` to a Path and check ``kind`` and ``image_size``."""
        object.__setattr__(self, "path", pathlib.Path(self.path))
        if self.kind not in KINDS:
            raise DataError(f"unknown data kind {self.kind!r}; use one of {list(KINDS)}"
                            + did_you_mean(str(self.kind), KINDS))
        if not isinstance(self.image_size, int) or isinstance(self.image_size, bool) or self.image_size < 8:
            raise DataError(f"image_size must be an integer >= 8, got {self.image_size!r}")


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
    else:  # unreachable for a DataSpec built normally
        raise DataError(f"unknown data kind {spec.kind!r}; use one of {list(KINDS)}")
    if "val" not in raw:
        images, labels = raw["train"]
        if len(labels) < 2:
            raise DataError(f"{spec.path}: train has {len(labels)} image(s) and there is no val split; "
                            "need at least 2 to hold out a validation set")
        order = np.random.default_rng(len(labels)).permutation(len(labels))
        n_val = max(1, int(round(VAL_FRACTION * len(labels))))
        raw["val"] = (images[order[:n_val]], labels[order[:n_val]])
        raw["train"] = (images[order[n_val:]], labels[order[n_val:]])
    return {k: TensorDataset(torch.from_numpy(x), torch.from_numpy(y)) for k, (x, y) in raw.items()}
