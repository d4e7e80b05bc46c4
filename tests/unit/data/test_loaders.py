"""Data loaders: image folders (PNG, JPEG, DICOM) and MedMNIST .npz, with their errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medfl.data import DataSpec, load_splits
from medfl.errors import DataError


def _png(path, value, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], value, np.uint8), mode="L").save(path)


def _dicom(path, pixels, photometric="MONOCHROME2", slope=1.0, intercept=0.0):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def test_png_jpeg_dicom_folder(tmp_path):
    root = tmp_path / "xray"
    _png(root / "train" / "NORMAL" / "a.png", 10)
    Image.fromarray(np.full((30, 30), 200, np.uint8), mode="L").convert("RGB").save(
        root / "train" / "NORMAL" / "b.jpeg")
    ramp = np.tile(np.arange(64, dtype=np.uint16) * 60, (64, 1))
    _dicom(root / "train" / "PNEUMONIA" / "c.dcm", ramp, slope=2.0, intercept=-5.0)
    _dicom(root / "train" / "PNEUMONIA" / "noext", ramp, photometric="MONOCHROME1")
    _png(root / "val" / "NORMAL" / "v.png", 50)
    _png(root / "val" / "PNEUMONIA" / "w.png", 60)
    splits = load_splits(DataSpec(kind="folder", path=root, image_size=32))
    x, y = splits["train"].tensors
    assert x.shape == (4, 1, 32, 32) and y.tolist() == [0, 0, 1, 1]
    assert abs(float(x[0].mean()) - 10 / 255) < 0.01 and abs(float(x[1].mean()) - 200 / 255) < 0.02
    mono2, mono1 = x[2, 0].numpy(), x[3, 0].numpy()
    assert mono2[:, 0].mean() < 0.1 and mono2[:, -1].mean() > 0.9  # dark to bright
    np.testing.assert_allclose(mono1, 1 - mono2, atol=0.02)  # MONOCHROME1 is inverted
    assert len(splits["val"]) == 2


def test_missing_val_split_is_carved_from_train(tmp_path):
    root = tmp_path / "d"
    for i in range(20):
        _png(root / "train" / ("NORMAL" if i % 2 else "PNEUMONIA") / f"{i}.png", i * 10)
    splits = load_splits(DataSpec(kind="folder", path=root, image_size=16))
    assert len(splits["val"]) == 3 and len(splits["train"]) == 17


@pytest.mark.parametrize("make,match", [
    (lambda r: None, "does not exist"),
    (lambda r: (r / "nothing").mkdir(parents=True), "no train/"),
    (lambda r: (_png(r / "train" / "A" / "a.png", 1)), "exactly two class"),
    (lambda r: ((r / "train" / "A").mkdir(parents=True), _png(r / "train" / "B" / "b.png", 1)), "has no PNG"),
    (lambda r: (_png(r / "train" / "A" / "a.png", 1), _png(r / "train" / "B" / "b.png", 1),
                _png(r / "val" / "A" / "a.png", 1), _png(r / "val" / "C" / "c.png", 1)), "same class"),
    (lambda r: (_png(r / "train" / "A" / "a.png", 1), (r / "train" / "B").mkdir(),
                (r / "train" / "B" / "broken.png").write_bytes(b"\x89PNG garbage")), "broken.png"),
    (lambda r: (_png(r / "train" / "A" / "a.png", 1), (r / "train" / "B").mkdir(),
                (r / "train" / "B" / "x.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")), "x.dcm"),
])
def test_folder_errors(tmp_path, make, match):
    root = tmp_path / "data"
    make(root)
    with pytest.raises(DataError, match=match):
        load_splits(DataSpec(kind="folder", path=root, image_size=16))


def test_npz(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "pneumoniamnist.npz"
    np.savez(path, train_images=rng.integers(0, 255, (10, 28, 28), dtype=np.uint8),
             train_labels=rng.integers(0, 2, (10, 1)),
             val_images=rng.integers(0, 255, (4, 28, 28, 3), dtype=np.uint8), val_labels=np.array([0, 1, 1, 0]))
    splits = load_splits(DataSpec(kind="npz", path=path, image_size=32))
    assert splits["train"].tensors[0].shape == (10, 1, 32, 32) and splits["val"].tensors[0].shape == (4, 1, 32, 32)
    assert splits["train"].tensors[0].max() <= 1.0
    assert splits["val"].tensors[1].tolist() == [0, 1, 1, 0]


@pytest.mark.parametrize("arrays,match", [
    ({"x": np.zeros(3)}, "lacks train_images"),
    ({"train_images": np.zeros((3, 8, 8), np.uint8), "train_labels": np.zeros(2)}, "3 images but 2 labels"),
    ({"train_images": np.zeros((3, 8, 8), np.uint8), "train_labels": np.array([0, 1, 2])}, "binary"),
    ({"train_images": np.zeros((3, 8), np.uint8), "train_labels": np.zeros(3)}, "shape"),
])
def test_npz_errors(tmp_path, arrays, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=match):
        load_splits(DataSpec(kind="npz", path=path, image_size=16))
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match="cannot read"):
        load_splits(DataSpec(kind="npz", path=tmp_path / "junk.npz", image_size=16))
