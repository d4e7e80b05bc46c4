"""Synthetic chest X-rays as DICOM CR instances (for the PACS tests, benchmark and demo)."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

__all__ = ["synthetic_cr", "to_unit_gray"]


def synthetic_cr(image: np.ndarray, *, patient_id: str, study_uid: str | None = None,
                 monochrome1: bool = False, bits: int = 12) -> FileDataset:
    """A CR instance holding ``image`` (float in [0, 1], 2-D) as ``bits``-bit MONOCHROME2/1 pixels.

    Parameters
    ----------
    image : ndarray
        Pixel values in [0, 1].
    patient_id : str
        Patient ID (synthetic).
    study_uid : str, optional
        Study Instance UID (a new one by default).
    monochrome1 : bool
        Store inverted, as MONOCHROME1.
    bits : int
        Bits stored (8 or 12).
    """
    maxv = 2 ** bits - 1
    pixels = np.round(np.clip(image, 0, 1) * maxv).astype(np.uint16 if bits > 8 else np.uint8)
    if monochrome1:
        pixels = (maxv - pixels).astype(pixels.dtype)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("synthetic-cr", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = f"SYNTHETIC^{patient_id}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate = ds.SeriesDate = "20260101"
    ds.StudyTime = ds.SeriesTime = "120000"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated = 16 if bits > 8 else 8
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope = 1
    ds.RescaleIntercept = 0
    ds.PixelData = pixels.tobytes()
    return ds


def to_unit_gray(ds: Dataset) -> np.ndarray:
    """Grayscale pixels of one frame as float64 in [0, 1], as a reader would see them.

    Applies the Modality LUT (rescale), the VOI LUT or window when the data set has one, scales
    to [0, 1] and inverts MONOCHROME1 so that bright is always dense. Training data (image folders)
    and scans scored from the PACS go through this same function.

    Parameters
    ----------
    ds : pydicom Dataset
        A single-frame grayscale image.

    References
    ----------
    .. [1] DICOM PS3.3 C.11.1 (Modality LUT), C.11.2 (VOI LUT), C.7.6.3.1.2 (MONOCHROME1).
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    arr = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        arr = apply_voi_lut(arr, ds).astype(np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")) == "MONOCHROME1":
        arr = 1.0 - arr
    return arr
