"""Segmentation data sets on disk: the Medical Segmentation Decathlon and BraTS layouts (NIfTI).

Both loaders return the cases they could read as arrays cropped or padded to one patch size,
and every case they could not read with its reason, so a hospital sees exactly which scans
were left out and why (an unreadable file, a missing sequence, image and label of different
shapes, label values outside the classes). Nothing is silently dropped.

Volumes are read with nibabel, reoriented to the closest canonical (RAS) orientation, optionally
resampled to a voxel spacing, each channel normalised (z-score over the non-zero voxels, as the
BraTS pipelines do; CT is clipped to a Hounsfield window first), then cropped around the
foreground of the image and centre-cropped or padded to the patch (MONAI's
``ResizeWithPadOrCrop``), and returned as (C, D, H, W) with D the slice axis.

References
----------
.. [1] M. Antonelli et al., "The Medical Segmentation Decathlon", Nature Communications 13, 2022.
.. [2] B. H. Menze et al., "The Multimodal Brain Tumor Image Segmentation Benchmark (BRATS)",
   IEEE TMI 2015; S. Bakas et al., arXiv:1811.02629, 2018 (file names, label values).
"""

from __future__ import annotations

import functools
import json
import pathlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from torch.utils.data import TensorDataset

from medfl.data.synthetic_seg import BRATS_LABELS, MODALITIES

__all__ = ["SEGMENTATION_KINDS", "SegmentationSet", "SkippedCase", "load_brats", "load_msd",
           "load_segmentation_splits"]

#: the ``[data] kind`` values of segmentation data sets
SEGMENTATION_KINDS = ("brats", "msd")
#: validation share of the cases (held out by case, with a permutation fixed by the case count)
VAL_FRACTION = 0.15

#: Reasons a case is left out (the keys of :class:`SkippedCase`'s ``reason``).
UNREADABLE, MISSING, SHAPE, LABELS, EMPTY = "unreadable", "missing", "shape_mismatch", "label_values", "empty"


@dataclass(frozen=True)
class SkippedCase:
    """A case the loader could not use.

    Attributes
    ----------
    case : str
        The case's name (BraTS folder, or the MSD image file's stem).
    reason : str
        One of ``unreadable``, ``missing``, ``shape_mismatch``, ``label_values``, ``empty``.
    detail : str
        What exactly is wrong, for the person who fixes the data.
    """

    case: str
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.case}: {self.reason}: {self.detail}"


@dataclass
class SegmentationSet:
    """Cases read from disk, at one patch size.

    Attributes
    ----------
    images : ndarray, float32, (N, C, *patch)
    labels : ndarray, int64, (N, *patch), classes 0..num_classes-1
    cases : list of str
    num_classes : int
    channel_names : list of str
    skipped : list of SkippedCase
    """

    images: np.ndarray
    labels: np.ndarray
    cases: list[str]
    num_classes: int
    channel_names: list[str]
    skipped: list[SkippedCase] = field(default_factory=list)

    def report(self) -> str:
        """One line per left-out case, headed by the counts."""
        lines = [f"{len(self.cases)} case(s) read, {len(self.skipped)} left out"]
        lines += [f"  {s}" for s in self.skipped]
        return "\n".join(lines)


class _CaseError(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _read(path: pathlib.Path, spacing: Sequence[float] | None, *, label: bool) -> np.ndarray:
    """A NIfTI file as an array with spatial axes (z, y, x) first-to-last and channels (if any) first."""
    import nibabel as nib

    if not path.is_file():
        raise _CaseError(MISSING, f"{path.name} does not exist")
    try:
        img = nib.as_closest_canonical(nib.load(str(path)))
        data = np.asarray(img.dataobj)
        zooms = img.header.get_zooms()[:3]
    except Exception as exc:  # nibabel raises many types for truncated or foreign files
        raise _CaseError(UNREADABLE, f"{path.name} is not a readable NIfTI file ({type(exc).__name__}: "
                                     f"{str(exc)[:120]})") from None
    if data.ndim not in (3, 4):
        raise _CaseError(SHAPE, f"{path.name} has {data.ndim} dimensions; expected a 3-D volume "
                                "(or 4-D with sequences last)")
    if not label and not np.issubdtype(data.dtype, np.number):
        raise _CaseError(UNREADABLE, f"{path.name} holds {data.dtype} values, not numbers")
    arr = data.astype(np.float32) if not label else data
    arr = np.moveaxis(arr, [0, 1, 2], [2, 1, 0])  # (x, y, z[, c]) -> (z, y, x[, c])
    if arr.ndim == 4:
        arr = np.moveaxis(arr, 3, 0)
    if spacing is not None:
        from scipy import ndimage

        factors = [z / s for z, s in zip(tuple(zooms)[::-1], spacing, strict=True)]
        if arr.ndim == 4:
            arr = np.stack([ndimage.zoom(c, factors, order=0 if label else 1) for c in arr])
        else:
            arr = ndimage.zoom(arr, factors, order=0 if label else 1)
    return arr


def _normalise(image: np.ndarray, ct_window: tuple[float, float] | None) -> np.ndarray:
    out = np.empty_like(image, dtype=np.float32)
    for c in range(image.shape[0]):
        x = image[c].astype(np.float32)
        if not np.isfinite(x).all():
            raise _CaseError(UNREADABLE, f"channel {c} holds NaN or infinite values")
        if ct_window is not None:
            x = np.clip(x, *ct_window)
            out[c] = (x - ct_window[0]) / (ct_window[1] - ct_window[0])
            continue
        nz = x[x != 0]
        mu, sd = (float(nz.mean()), float(nz.std())) if nz.size else (0.0, 1.0)
        out[c] = np.where(x != 0, (x - mu) / (sd if sd > 0 else 1.0), 0.0)
    return out


def _to_patch(image: np.ndarray, label: np.ndarray, patch: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    from monai.transforms import ResizeWithPadOrCrop

    fg = np.argwhere(np.abs(image).sum(0) > 0)
    if fg.size:  # crop to the image's foreground first, so the patch is spent on the body
        lo, hi = fg.min(0), fg.max(0) + 1
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        image, label = image[(slice(None), *box)], label[box]
    resize = ResizeWithPadOrCrop(spatial_size=tuple(patch))
    img = np.asarray(resize(image))  # type: ignore[arg-type]  # MONAI takes arrays too
    lab = np.asarray(resize(label[None].astype(np.float32)))[0]  # type: ignore[arg-type]
    return img.astype(np.float32), np.rint(lab).astype(np.int64)


def _labels(raw: np.ndarray, mapping: dict[int, int], num_classes: int) -> np.ndarray:
    if raw.ndim != 3:
        raise _CaseError(SHAPE, f"the label has {raw.ndim} dimensions; expected a 3-D label map")
    if np.issubdtype(raw.dtype, np.floating):
        if not np.isfinite(raw).all() or not np.all(raw == np.round(raw)):
            raise _CaseError(LABELS, "the label holds non-integer values")
    values = np.unique(raw).astype(np.int64)
    bad = [int(v) for v in values if int(v) not in mapping]
    if bad:
        raise _CaseError(LABELS, f"label values {bad[:8]} are outside the classes {sorted(mapping)}")
    lut = np.zeros(max(mapping) + 1, np.int64)
    for k, v in mapping.items():
        lut[k] = v
    out = lut[raw.astype(np.int64)]
    assert int(out.max(initial=0)) < num_classes
    return out


def _collect(items: Iterable[tuple[str, Callable[[], tuple[np.ndarray, np.ndarray]]]], channels: list[str],
             num_classes: int, patch: Sequence[int]) -> SegmentationSet:
    """Read each (case, reader) pair; a reader's :class:`_CaseError` leaves that case out with its reason."""
    images, labels, cases, skipped = [], [], [], []
    for case, read in items:
        try:
            x, y = read()
        except _CaseError as err:
            skipped.append(SkippedCase(case, err.reason, err.detail))
            continue
        images.append(x)
        labels.append(y)
        cases.append(case)
    imgs = np.stack(images) if images else np.empty((0, len(channels), *patch), np.float32)
    labs = np.stack(labels) if labels else np.empty((0, *patch), np.int64)
    return SegmentationSet(imgs, labs, cases, num_classes, channels, skipped)


def _check_patch(patch: Sequence[int]) -> tuple[int, ...]:
    p = tuple(patch)
    if len(p) != 3 or not all(isinstance(v, int) and v >= 1 for v in p):
        raise ValueError(f"patch must be three positive integers (D, H, W), got {patch!r}")
    return p


def load_msd(root: str | pathlib.Path, *, patch: Sequence[int] = (32, 32, 32),
             spacing: Sequence[float] | None = None, ct_window: tuple[float, float] | None = None
             ) -> SegmentationSet:
    """Read the training cases of a Medical Segmentation Decathlon task folder.

    Parameters
    ----------
    root : path
        The task folder holding ``dataset.json``, ``imagesTr/`` and ``labelsTr/``.
    patch : (D, H, W)
        Patch size every case is cropped or padded to.
    spacing : (z, y, x) mm, optional
        Resample to this voxel spacing first.
    ct_window : (low, high) HU, optional
        For CT tasks: clip to this window and scale to [0, 1] instead of z-scoring. Defaults to
        (-200, 250) when dataset.json names the modality CT.

    Raises
    ------
    ValueError
        When dataset.json is missing or is not a Decathlon description (the whole set is unusable).
    """
    patch = _check_patch(patch)
    root = pathlib.Path(root)
    meta_path = root / "dataset.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{root} has no dataset.json; point at a Decathlon task folder "
                         "(dataset.json, imagesTr/, labelsTr/)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{meta_path} is not valid JSON ({exc}); restore it from the task's archive") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("labels"), dict) or not isinstance(
            meta.get("training"), list) or not isinstance(meta.get("modality"), dict):
        raise ValueError(f"{meta_path} lacks the Decathlon fields 'labels', 'modality' and 'training'")
    try:
        classes = sorted(int(k) for k in meta["labels"])
        channels = [str(meta["modality"][k]) for k in sorted(meta["modality"], key=int)]
    except (TypeError, ValueError):
        raise ValueError(f"{meta_path}: 'labels' and 'modality' must be keyed by integers") from None
    if classes != list(range(len(classes))) or len(classes) < 2:
        raise ValueError(f"{meta_path}: labels must be 0..K-1 with K >= 2, got {classes}")
    if ct_window is None and channels == ["CT"]:
        ct_window = (-200.0, 250.0)
    mapping = {k: k for k in classes}

    def read(entry: object) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(entry, dict) or not {"image", "label"} <= set(entry):
            raise _CaseError(MISSING, f"training entry {entry!r:.80} lacks 'image' or 'label'")
        img = _read(root / str(entry["image"]), spacing, label=False)
        lab_raw = _read(root / str(entry["label"]), spacing, label=True)
        img = img[None] if img.ndim == 3 else img
        if img.shape[0] != len(channels):
            raise _CaseError(MISSING, f"the image has {img.shape[0]} channel(s); dataset.json names "
                                      f"{len(channels)} ({', '.join(channels)})")
        if lab_raw.shape != img.shape[1:]:
            raise _CaseError(SHAPE, f"image {tuple(img.shape[1:])} and label {tuple(lab_raw.shape)} differ")
        return _to_patch(_normalise(img, ct_window), _labels(lab_raw, mapping, len(classes)), patch)

    def name(entry: object) -> str:
        image = str(entry.get("image", "?")) if isinstance(entry, dict) else "?"
        return pathlib.Path(image).name.removesuffix(".gz").removesuffix(".nii")

    return _collect(((name(e), functools.partial(read, e)) for e in meta["training"]), channels, len(classes), patch)


def load_brats(root: str | pathlib.Path, *, patch: Sequence[int] = (32, 32, 32),
               spacing: Sequence[float] | None = None) -> SegmentationSet:
    """Read BraTS cases: one folder per case with ``<case>_{t1,t1ce,t2,flair,seg}.nii.gz``.

    Labels 0, 1 (necrotic core), 2 (oedema), 4 (enhancing) become classes 0..3. Files named
    ``.nii`` (not gzipped) are read as well. Folders without a ``_seg`` file are left out as
    ``missing`` (validation cases of the challenge come without labels).
    """
    patch = _check_patch(patch)
    root = pathlib.Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder of BraTS cases")

    def read(d: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
        def find(suffix: str) -> pathlib.Path:
            for ext in (".nii.gz", ".nii"):
                p = d / f"{d.name}_{suffix}{ext}"
                if p.is_file():
                    return p
            raise _CaseError(MISSING, f"no {d.name}_{suffix}.nii.gz (sequence {suffix!r})")

        vols = [_read(find(m), spacing, label=False) for m in MODALITIES]
        if len({v.shape for v in vols}) != 1 or vols[0].ndim != 3:
            raise _CaseError(SHAPE, "the sequences differ in shape: " + ", ".join(
                f"{m} {tuple(v.shape)}" for m, v in zip(MODALITIES, vols, strict=True)))
        lab_raw = _read(find("seg"), spacing, label=True)
        if lab_raw.shape != vols[0].shape:
            raise _CaseError(SHAPE, f"sequences {tuple(vols[0].shape)} and seg {tuple(lab_raw.shape)} differ")
        return _to_patch(_normalise(np.stack(vols), None), _labels(lab_raw, BRATS_LABELS, 4), patch)

    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return _collect(((d.name, functools.partial(read, d)) for d in folders), list(MODALITIES), 4, patch)


def load_segmentation_splits(kind: str, root: str | pathlib.Path, *, patch: Sequence[int]
                             ) -> tuple[dict[str, TensorDataset], SegmentationSet]:
    """A hospital's segmentation data as train and val splits of whole cases, and what was read.

    Parameters
    ----------
    kind : {"brats", "msd"}
        The layout.
    root : path
        The BraTS folder of cases or the Decathlon task folder.
    patch : (D, H, W)
        Patch every case is cropped or padded to.

    Returns
    -------
    splits : dict
        ``train`` and ``val``: TensorDataset of (float32 images (N, C, D, H, W), int64 labels (N, D, H, W)).
    cases : SegmentationSet
        Every case read and every case left out, with its reason (:meth:`SegmentationSet.report`).

    Raises
    ------
    DataError
        Unknown kind, an unusable folder, or fewer than 2 readable cases.
    """
    import torch

    from medfl.errors import DataError, did_you_mean

    if kind not in SEGMENTATION_KINDS:
        raise DataError(f"unknown segmentation data kind {kind!r}; use one of {list(SEGMENTATION_KINDS)}"
                        + did_you_mean(str(kind), SEGMENTATION_KINDS))
    try:
        got = load_brats(root, patch=patch) if kind == "brats" else load_msd(root, patch=patch)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    n = len(got.cases)
    if n < 2:
        raise DataError(f"{root}: {got.report()}; need at least 2 readable cases to hold out a validation case")
    order = np.random.default_rng(n).permutation(n)
    n_val = max(1, int(round(VAL_FRACTION * n)))
    parts = {"val": order[:n_val], "train": order[n_val:]}
    return ({k: TensorDataset(torch.from_numpy(got.images[idx]), torch.from_numpy(got.labels[idx]))
             for k, idx in parts.items()}, got)
