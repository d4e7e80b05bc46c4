"""Image folders: one folder per class per split (the pediatric pneumonia data set's layout).

``root/train/NORMAL/*.png``, ``root/train/PNEUMONIA/*.jpeg``, ``root/val/...``,
``root/test/...``; PNG, JPEG and DICOM (``.dcm``, or any file with the DICM preamble).
Class indices follow sorted class names (NORMAL = 0, PNEUMONIA = 1). Every file is read; one
that cannot be is an error naming the file, never silently dropped. What the loader does not
read by design (hidden files such as ``.DS_Store``, ``Thumbs.db``, folders inside a class
folder, entries beside the splits) is listed by :func:`skipped_files`, which
``medfl-agent check`` prints and the loader logs.
"""

from __future__ import annotations

import logging
import pathlib
from dataclasses import dataclass

import numpy as np

from medfl.errors import DataError

__all__ = ["REASONS", "SkippedFile", "load_folder_splits", "read_image", "skipped_files"]

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
_IGNORED = {"thumbs.db", "desktop.ini"}  # operating-system litter, never images
_SHOWN = 5  # unreadable files named in an error message


def _is_dicom(path: pathlib.Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with path.open("rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def read_image(path: pathlib.Path, image_size: int) -> np.ndarray:
    """Read one image as float32 (image_size, image_size) in [0, 1].

    Parameters
    ----------
    path : Path
        PNG, JPEG or DICOM file.
    image_size : int
        Output side in pixels.
    """
    from PIL import Image

    if _is_dicom(path):
        arr = _read_dicom(path)
        img = Image.fromarray(arr.astype(np.float32), mode="F")
    else:
        try:
            with Image.open(path) as im:
                img = im.convert("L").copy()
        except Exception as exc:
            raise DataError(f"cannot read image {path}: {exc}") from None
        img = img.convert("F")
    img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
    out = np.asarray(img, dtype=np.float32)
    if not _is_dicom(path):
        out = out / 255.0
    return np.clip(out, 0.0, 1.0)


def _read_dicom(path: pathlib.Path) -> np.ndarray:
    import pydicom

    from medfl.data.dicom import to_unit_gray

    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except Exception as exc:
        raise DataError(f"cannot read DICOM pixels from {path}: {exc}") from None
    if pixels.ndim == 3 and int(getattr(ds, "SamplesPerPixel", 1)) == 3:  # colour: to grayscale
        return pixels.astype(np.float64).mean(axis=-1) / float(np.iinfo(pixels.dtype).max
                                                             if pixels.dtype.kind in "ui" else 1.0)
    if pixels.ndim != 2:
        raise DataError(f"{path}: expected one grayscale frame, got pixel array of shape {pixels.shape}")
    return to_unit_gray(ds)


#: why an entry under the data folder is not read (:attr:`SkippedFile.reason`)
NOT_IMAGE, SUBFOLDER, OUTSIDE, NOT_SPLIT = "not-image", "subfolder", "outside-classes", "not-split"
#: each reason, said of one entry and of several
REASONS = {NOT_IMAGE: ("file that is not an image", "files that are not images"),
           SUBFOLDER: ("folder inside a class folder", "folders inside a class folder"),
           OUTSIDE: ("entry beside the class folders", "entries beside the class folders"),
           NOT_SPLIT: ("entry that is not a split (train, val, test)",
                       "entries that are not a split (train, val, test)")}


@dataclass(frozen=True)
class SkippedFile:
    """An entry under the data folder that the loader does not read, by design.

    Attributes
    ----------
    path : str
        Its path relative to the data folder, with ``/`` (``train/NORMAL/Thumbs.db``).
    split : str or None
        The split it sits in (None beside the splits).
    reason : str
        A key of :data:`REASONS`: :data:`NOT_IMAGE` (hidden files such as ``.DS_Store``,
        ``Thumbs.db``, ``desktop.ini``), :data:`SUBFOLDER`, :data:`OUTSIDE` (files in a split
        folder, hidden folders there) or :data:`NOT_SPLIT`.
    """

    path: str
    split: str | None
    reason: str


def _litter(p: pathlib.Path) -> bool:
    """Hidden files and operating-system files, which the loader never reads as images."""
    return p.name.startswith(".") or p.name.lower() in _IGNORED


def _classes(split_dir: pathlib.Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not _litter(p))


def skipped_files(root: str | pathlib.Path) -> list[SkippedFile]:
    """Every entry under ``root`` that :func:`load_folder_splits` does not read, sorted by path.

    Parameters
    ----------
    root : str or Path
        The data folder (an absent one has nothing skipped).
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        return []
    out = [SkippedFile(p.name + ("/" if p.is_dir() else ""), None, NOT_SPLIT)
           for p in root.iterdir() if p.name not in SPLITS or not p.is_dir()]
    for split in (s for s in SPLITS if (root / s).is_dir()):
        classes = _classes(root / split)
        for entry in (root / split).iterdir():
            if entry.name not in classes:
                out.append(SkippedFile(f"{split}/{entry.name}" + ("/" if entry.is_dir() else ""), split, OUTSIDE))
        for cname in classes:
            for entry in (root / split / cname).iterdir():
                rel = f"{split}/{cname}/{entry.name}"
                if entry.is_dir():
                    out.append(SkippedFile(rel + "/", split, SUBFOLDER))
                elif not entry.is_file() or _litter(entry):
                    out.append(SkippedFile(rel, split, NOT_IMAGE))
    return sorted(out, key=lambda s: s.path)


def _read_class(folder: pathlib.Path, image_size: int) -> tuple[list[np.ndarray], list[str]]:
    """Every image of one class folder, and a 'file: why' line for each file that cannot be read."""
    images, problems = [], []
    for f in _files(folder):
        if f.suffix.lower() not in _IMAGE_SUFFIXES and not _is_dicom(f):
            problems.append(f"{f}: not a PNG, JPEG or DICOM file (suffix {f.suffix or 'none'!r}, no DICM preamble)")
            continue
        try:
            images.append(read_image(f, image_size))
        except DataError as exc:
            problems.append(str(exc))
    return images, problems


def load_folder_splits(root: pathlib.Path, image_size: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read every split under ``root`` into (images (N,1,S,S) float32, labels (N,) int64).

    Parameters
    ----------
    root : Path
        The data set folder.
    image_size : int
        Side in pixels after resizing.
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; set [data] path in agent.toml")
    splits = [s for s in SPLITS if (root / s).is_dir()]
    if "train" not in splits:
        raise DataError(f"{root} has no train/ folder; expected train/<CLASS>/<images> "
                        "(e.g. train/NORMAL, train/PNEUMONIA)")
    classes = None
    out = {}
    for split in splits:
        names = _classes(root / split)
        if classes is None:
            classes = names
            if len(classes) != 2:
                raise DataError(f"{root / split} has classes {classes}; medfl trains binary classifiers: "
                                "give exactly two class folders (e.g. NORMAL and PNEUMONIA)")
        elif names != classes:
            raise DataError(f"{root / split} has classes {names} but train/ has {classes}; use the same class "
                            "folders in every split")
        images: list[np.ndarray] = []
        labels: list[int] = []
        problems: list[str] = []
        for idx, cname in enumerate(classes):
            got, bad = _read_class(root / split / cname, image_size)
            problems += bad
            if not got and not bad:
                raise DataError(f"{root / split / cname} has no PNG, JPEG or DICOM images")
            images += got
            labels += [idx] * len(got)
        if problems:
            more = f"\n  ... and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
            raise DataError(f"{len(problems)} file(s) under {root / split} cannot be read (none was skipped; "
                            "fix or move them out of the class folders):\n  " + "\n  ".join(problems[:_SHOWN])
                            + more)
        out[split] = (np.stack(images)[:, None].astype(np.float32), np.asarray(labels, np.int64))
    skipped = skipped_files(root)
    if skipped:
        # counts only: names could carry patient identifiers; 'medfl-agent check' lists them on the console
        log.info("data folder %s: %d entries not read (%s); 'medfl-agent check' names them", root, len(skipped),
                 ", ".join(sorted({REASONS[s.reason][1] for s in skipped})))
    return out
