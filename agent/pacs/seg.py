"""From a complete CT/MR series to a DICOM Segmentation: slice order, volume, model, SEG.

:func:`order_slices` checks that the instances form one volume (one modality, single-frame,
one matrix, one orientation, distinct positions) and sorts them along the slice normal (the
cross product of the ImageOrientationPatient row and column vectors, dotted with
ImagePositionPatient), falling back to InstanceNumber when positions are missing. A series
that does not form a volume raises :class:`~medfl.errors.DataError` with the reason, which
the caller quarantines. :func:`predict_labels` runs the segmentation model on the z-scored
volume at its native voxel grid: a volume that fits the model's patch is zero-padded to it,
a larger one goes through MONAI's sliding-window inference; the labels are the argmax per
voxel. :func:`build_seg` writes them as a BINARY DICOM SEG (one segment per foreground class,
AUTOMATIC, the algorithm named) on the source grid, in the source study, with UIDs derived
from the source SeriesInstanceUID, so a SEG sent twice replaces itself.

References
----------
.. [1] DICOM PS3.3 C.7.6.2 (Image Plane Module: ImagePositionPatient, ImageOrientationPatient),
   A.51 (Segmentation IOD), C.8.20.2 (Segmentation Image Module, Segment Sequence).
.. [2] MONAI ``monai.inferers.sliding_window_inference``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medfl.errors import DataError

__all__ = ["SEG_SERIES_DESCRIPTION", "build_seg", "order_slices", "predict_labels", "seg_uids", "volume_of"]

log = logging.getLogger(__name__)

SEG_SERIES_DESCRIPTION = "AI RESULT medfl segmentation (not verified)"
#: the modalities whose series are segmented
SEGMENTABLE_MODALITIES = ("CT", "MR")


def _attr(ds: Dataset, name: str) -> object:
    return ds.get(name, None)


def _check_consistent(datasets: Sequence[Dataset]) -> None:
    if not datasets:
        raise DataError("the series has no instances")
    modalities = sorted({str(_attr(ds, "Modality") or "missing") for ds in datasets})
    if len(modalities) != 1 or modalities[0] not in SEGMENTABLE_MODALITIES:
        raise DataError(f"mixed or unsupported modalities in one series: {', '.join(modalities)}; "
                        "one of CT or MR expected")
    for ds in datasets:
        frames = int(_attr(ds, "NumberOfFrames") or 1)  # type: ignore[call-overload]
        if frames != 1:
            raise DataError(f"a multi-frame image ({frames} frames) in the series; single-frame slices expected")
        if "PixelData" not in ds:
            raise DataError("an instance of the series has no Pixel Data")
        if int(_attr(ds, "SamplesPerPixel") or 1) != 1:  # type: ignore[call-overload]
            raise DataError("an instance of the series is not grayscale (SamplesPerPixel != 1)")
    shapes = sorted({(int(ds.Rows), int(ds.Columns)) for ds in datasets})
    if len(shapes) != 1:
        raise DataError(f"slices of different sizes (Rows x Columns {', '.join(f'{r}x{c}' for r, c in shapes)}); "
                        "one matrix per series expected")


def order_slices(datasets: Sequence[Dataset]) -> list[Dataset]:
    """The instances of one series sorted into a volume, first slice first.

    Parameters
    ----------
    datasets : sequence of pydicom Dataset
        Every instance of the series (duplicates already removed).

    Raises
    ------
    DataError
        The instances do not form one volume; the message says why.
    """
    _check_consistent(datasets)
    have_pos = all("ImagePositionPatient" in ds and "ImageOrientationPatient" in ds for ds in datasets)
    if have_pos:
        orientations = {tuple(round(float(v), 4) for v in ds.ImageOrientationPatient) for ds in datasets}
        if len(orientations) != 1:
            raise DataError(f"slices with {len(orientations)} different ImageOrientationPatient; one volume expected")
        iop = np.asarray(next(iter(orientations)), dtype=np.float64)
        normal = np.cross(iop[:3], iop[3:])
        keys = [float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=np.float64))) for ds in datasets]
        what = "ImagePositionPatient"
    elif all(_attr(ds, "InstanceNumber") is not None for ds in datasets):
        keys = [float(ds.InstanceNumber) for ds in datasets]
        what = "InstanceNumber"
    else:
        raise DataError("cannot order the slices: an instance has neither ImagePositionPatient (with "
                        "ImageOrientationPatient) nor InstanceNumber")
    if len({round(k, 3) for k in keys}) != len(keys):
        raise DataError(f"two slices share one {what}; a series with one volume expected (several "
                        "acquisitions or echoes in one series are not supported)")
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    return [datasets[i] for i in order]


def volume_of(slices: Sequence[Dataset]) -> np.ndarray:
    """The sorted slices as a float32 volume (slices, rows, columns) in modality units.

    Raises
    ------
    DataError
        Pixel data that cannot be decoded (a compressed transfer syntax without a decoder).
    """
    planes = []
    for ds in slices:
        try:
            arr = ds.pixel_array.astype(np.float32)
        except Exception as exc:  # pydicom raises many types for undecodable pixel data
            ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            name = getattr(ts, "name", str(ts))
            raise DataError(f"cannot decode the pixel data (transfer syntax {name}): {type(exc).__name__}") from None
        if arr.ndim != 2:
            raise DataError(f"a slice decodes to shape {arr.shape}; 2-D single-frame images expected")
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        planes.append(arr * np.float32(slope) + np.float32(intercept))
    return np.stack(planes)


def normalise(volume: np.ndarray) -> np.ndarray:
    """Z-score a volume over all its voxels (float32; a constant volume becomes zeros)."""
    v = volume.astype(np.float32)
    std = float(v.std())
    return ((v - np.float32(v.mean())) / np.float32(std if std > 1e-6 else 1.0)).astype(np.float32)


def predict_labels(model: object, volume: np.ndarray, *, patch: tuple[int, int, int], overlap: float = 0.25
                   ) -> tuple[np.ndarray, int]:
    """Per-voxel class labels (uint8, the volume's shape) of a segmentation model, and its class count.

    Parameters
    ----------
    model : torch.nn.Module
        A 3-D segmentation model taking (N, 1, D, H, W) and returning per-voxel logits.
    volume : ndarray
        (slices, rows, columns) in modality units (:func:`volume_of`); z-scored here.
    patch : (int, int, int)
        The model's input patch (D, H, W), each side divisible by the model's ``2**depth``.
    overlap : float
        Sliding-window overlap, for volumes larger than the patch.
    """
    import torch

    x = torch.from_numpy(normalise(volume))[None, None]
    shape = tuple(int(s) for s in x.shape[2:])
    with torch.no_grad():
        if all(s <= p for s, p in zip(shape, patch, strict=True)):
            pad: list[int] = []
            for s, p in reversed(list(zip(shape, patch, strict=True))):
                pad += [0, p - s]
            logits = model(torch.nn.functional.pad(x, pad))  # type: ignore[operator]
            logits = logits[:, :, :shape[0], :shape[1], :shape[2]]
        else:
            from monai.inferers import sliding_window_inference

            logits = sliding_window_inference(x, roi_size=patch, sw_batch_size=1, predictor=model,  # type: ignore[arg-type]
                                              overlap=overlap, mode="constant", padding_mode="constant")
    labels = torch.argmax(logits, dim=1)[0].to(torch.uint8).numpy()  # type: ignore[union-attr]
    return labels, int(logits.shape[1])  # type: ignore[union-attr]


def seg_uids(series_uid: str) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of the SEG for a source series: the same on every run."""
    return (str(generate_uid(entropy_srcs=["medfl-seg-series", series_uid])),
            str(generate_uid(entropy_srcs=["medfl-seg", series_uid])))


def build_seg(slices: Sequence[Dataset], labels: np.ndarray, *, num_classes: int, model_id: str,
              version: str) -> Dataset:
    """A BINARY DICOM SEG of ``labels`` on the source slices' grid.

    Parameters
    ----------
    slices : sequence of Dataset
        The source series in volume order (:func:`order_slices`).
    labels : ndarray
        (slices, rows, columns) class labels 0..num_classes-1 (:func:`predict_labels`).
    num_classes : int
        Classes of the model, background (0) included; one segment per foreground class.
    model_id, version : str
        The model (named in the AlgorithmIdentificationSequence) and medfl's version.

    References
    ----------
    DICOM PS3.3 A.51 and C.8.20 (module docstring).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(name="medfl", version=f"{version} {model_id}"[:64],
                                                   family=codes.cid7162.ArtificialIntelligence)
    segments = [hd.seg.SegmentDescription(
        segment_number=k, segment_label=f"medfl class {k}", segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=hd.sr.CodedConcept(value=f"class-{k}", scheme_designator="99MEDFL",
                                                   meaning=f"medfl model class {k}"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm)
        for k in range(1, num_classes)]
    series_uid, sop_uid = seg_uids(str(slices[0].SeriesInstanceUID))
    seg = hd.seg.Segmentation(
        source_images=list(slices), pixel_array=labels.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=segments,
        series_instance_uid=series_uid, series_number=9902, sop_instance_uid=sop_uid, instance_number=1,
        manufacturer="medfl", manufacturer_model_name=model_id.split(":")[0][:64], software_versions=version,
        device_serial_number="medfl-agent", series_description=SEG_SERIES_DESCRIPTION, content_label="MEDFL_AI",
        content_description="medfl automatic segmentation (AI result, not verified)", omit_empty_frames=False)
    return seg
