"""Image-folder data sets: PNG, JPEG and DICOM (MONOCHROME1/2, rescale), splits, and every error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medfl.data import DataSpec, load_splits
from medfl.errors import DataError


def _png(path, value, size=(40, 30), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = size[::-1] + ((3,) if mode == "RGB" else ())
    Image.fromarray(np.full(shape, value, np.uint8), mode=mode).save(path)


def _dicom(path, pixels, *, photometric="MONOCHROME2", slope=1.0, intercept=0.0, preamble=True):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _gradient():
    """A 12-bit left-to-right ramp: dark on the left in MONOCHROME2."""
    return np.tile(np.linspace(0, 4000, 32), (32, 1)).astype(np.uint16)


def _tree(root, splits=("train", "val")):
    for split in splits:
        for k in range(2):
            _png(root / split / "NORMAL" / f"n{k}.png", 40 + k)
            _png(root / split / "PNEUMONIA" / f"p{k}.png", 200 + k)


def test_png_jpeg_and_dicom_in_one_folder(tmp_path):
    root = tmp_path / "ds"
    _tree(root)
    _png(root / "train" / "NORMAL" / "colour.jpeg", 60, mode="RGB")
    _dicom(root / "train" / "PNEUMONIA" / "mono2.dcm", _gradient(), slope=2.0, intercept=-100.0)
    _dicom(root / "train" / "PNEUMONIA" / "mono1.dcm", _gradient(), photometric="MONOCHROME1", slope=0.5)
    _dicom(root / "train" / "PNEUMONIA" / "IM0001", _gradient())  # no extension: found by the DICM preamble
    splits = load_splits(DataSpec(kind="folder", path=root, image_size=16))
    assert set(splits) == {"train", "val"}
    x, y = splits["train"].tensors
    assert x.shape == (8, 1, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert y.tolist() == [0, 0, 0, 1, 1, 1, 1, 1]  # sorted classes and files: NORMAL=0, PNEUMONIA=1
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert float(x[0].mean()) == pytest.approx(60 / 255, abs=0.01)  # colour.jpeg, to gray
    by_name = ["IM0001", "mono1.dcm", "mono2.dcm"]
    rows = {name: x[3 + i, 0, 8].numpy() for i, name in enumerate(by_name)}
    assert rows["mono2.dcm"][0] < 0.1 and rows["mono2.dcm"][-1] > 0.9  # dark to bright
    assert rows["mono1.dcm"][0] > 0.9 and rows["mono1.dcm"][-1] < 0.1  # MONOCHROME1 comes out inverted
    np.testing.assert_allclose(rows["IM0001"], rows["mono2.dcm"], atol=1e-5)  # rescale is affine
    assert float(x[6].mean()) == pytest.approx(200 / 255, abs=0.01)


def test_missing_val_split_is_carved_deterministically(tmp_path):
    root = tmp_path / "ds"
    for k in range(20):
        _png(root / "train" / "NORMAL" / f"n{k:02d}.png", k)
        _png(root / "train" / "PNEUMONIA" / f"p{k:02d}.png", 100 + k)
    _png(root / "test" / "NORMAL" / "a.png", 1)
    _png(root / "test" / "PNEUMONIA" / "b.png", 2)
    a = load_splits(DataSpec(kind="folder", path=root, image_size=8))
    b = load_splits(DataSpec(kind="folder", path=str(root), image_size=8))
    assert len(a["val"]) == 6 and len(a["train"]) == 34 and len(a["test"]) == 2
    for split in a:
        assert torch.equal(a[split].tensors[0], b[split].tensors[0])
    train_pixels = {float(v) for v in a["train"].tensors[0][:, 0, 0, 0]}
    assert not train_pixels & {float(v) for v in a["val"].tensors[0][:, 0, 0, 0]}


def _no_root(root):
    return root / "absent"


def _no_splits(root):
    (root / "images").mkdir(parents=True)
    return root


def _empty_class(root):
    _tree(root)
    for p in (root / "val" / "PNEUMONIA").iterdir():
        p.unlink()
    return root


def _corrupt(root):
    _tree(root)
    (root / "train" / "NORMAL" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "train" / "PNEUMONIA" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 10)
    return root


def _stray_file(root):
    _tree(root)
    (root / "train" / "NORMAL" / "notes.txt").write_text("not an image")
    return root


def _class_mismatch(root):
    _tree(root)
    (root / "val" / "PNEUMONIA").rename(root / "val" / "VIRAL")
    return root


def _three_classes(root):
    _tree(root)
    _png(root / "train" / "COVID" / "c.png", 9)
    return root


@pytest.mark.parametrize("make,match", [
    (_no_root, "does not exist"),
    (_no_splits, "no train/ folder"),
    (_empty_class, r"val[/\\]PNEUMONIA has no PNG, JPEG or DICOM images"),
    (_corrupt, r"(?s)2 file\(s\) .*cannot be read.*broken\.png: .*\n.*broken\.dcm: "),
    (_stray_file, r"notes\.txt: not a PNG, JPEG or DICOM"),
    (_class_mismatch, "use the same class folders"),
    (_three_classes, "exactly two class folders"),
])
def test_folder_errors(tmp_path, make, match):
    root = make(tmp_path / "ds")
    with pytest.raises(DataError, match=match):
        load_splits(DataSpec(kind="folder", path=root, image_size=8))


def test_spec_errors(tmp_path):
    with pytest.raises(DataError, match="did you mean 'folder'"):
        DataSpec(kind="folders", path=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="image_size"):
        DataSpec(kind="folder", path=tmp_path, image_size=0)


def test_hidden_and_os_files_are_ignored(tmp_path):
    root = tmp_path / "ds"
    _tree(root)
    (root / "train" / "NORMAL" / ".DS_Store").write_bytes(b"junk")
    (root / "train" / "NORMAL" / "Thumbs.db").write_bytes(b"junk")
    assert len(load_splits(DataSpec(kind="folder", path=root, image_size=8))["train"]) == 4


def test_skipped_files_names_what_the_loader_does_not_read(tmp_path):
    from medfl.data.folder import NOT_IMAGE, NOT_SPLIT, OUTSIDE, SUBFOLDER, skipped_files

    root = tmp_path / "ds"
    _tree(root)
    (root / "train" / "NORMAL" / "Thumbs.db").write_bytes(b"x")
    (root / "train" / "PNEUMONIA" / ".DS_Store").write_bytes(b"x")
    (root / "train" / "NORMAL" / "old").mkdir()
    (root / "train" / "notes.txt").write_text("x")
    (root / "validation").mkdir()
    assert len(load_splits(DataSpec(kind="folder", path=root, image_size=16))["train"]) == 4
    got = {(s.path, s.split, s.reason) for s in skipped_files(root)}
    assert got == {("train/NORMAL/Thumbs.db", "train", NOT_IMAGE), ("train/PNEUMONIA/.DS_Store", "train", NOT_IMAGE),
                   ("train/NORMAL/old/", "train", SUBFOLDER), ("train/notes.txt", "train", OUTSIDE),
                   ("validation/", None, NOT_SPLIT)}
