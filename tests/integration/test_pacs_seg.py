"""CT/MR segmentation through the PACS node against a real Orthanc and real DCMTK tools on loopback.

Orthanc runs with the shipped configuration, its Lua routing extended to forward MR and CT (the
shipped script forwards CR and DX only; see docs/pacs-seg-notes.md); MR series go in with
DCMTK's storescu; the DICOM SEG is read back through Orthanc's REST API, validated with
dicom3tools' dciodvfy, and its pixels compared with the model run directly on the volume.
"""

from __future__ import annotations

import io
import json
import pathlib
import random
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.integration.test_pacs import STORESCU, Orthanc, PacsAgent, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.orthanc, pytest.mark.slow]

ECHOSCU = shutil.which("echoscu", path="/usr/bin:/usr/local/bin")

if shutil.which("Orthanc") is None or STORESCU is None or ECHOSCU is None:
    pytestmark.append(pytest.mark.skip(reason="needs Debian's orthanc and dcmtk packages"))

DCIODVFY = shutil.which("dciodvfy")

#: the shipped routing plus CT and MR: what a site that segments adds to its Orthanc
STUDY = "1.2.826.0.1.3680043.8.498.9001"
SIDE, SLICES = 32, 24


class SegOrthanc(Orthanc):
    """The test_pacs Orthanc (its shipped routing script forwards CT/MR too), with a SEG query."""

    def segs(self) -> list[Dataset]:
        out = []
        for series in self.get("/series?expand"):
            if series["MainDicomTags"].get("Modality") == "SEG":
                for inst in series["Instances"]:
                    out.append(dcmread(io.BytesIO(self.get(f"/instances/{inst}/file"))))
        return out


def mr_volume(seed: int) -> np.ndarray:
    """A smooth synthetic MR volume (slices, rows, cols) of uint16 with a bright blob."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:SLICES, :SIDE, :SIDE].astype(np.float32)
    blob = np.exp(-(((z - 12) / 6) ** 2 + ((y - 14) / 7) ** 2 + ((x - 18) / 6) ** 2))
    return (300 + 1500 * blob + rng.normal(0, 40, blob.shape)).clip(0, 4000).astype(np.uint16)


def write_mr_series(folder: pathlib.Path, volume: np.ndarray, series_uid: str) -> list[pathlib.Path]:
    """One MR Image Storage file per slice, slice i at z = 3 i mm (positions, not names, give the order)."""
    folder.mkdir(parents=True, exist_ok=True)
    sop_class = "1.2.840.10008.5.1.4.1.1.4"
    paths = []
    for i, plane in enumerate(volume):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        uid = generate_uid(entropy_srcs=[series_uid, str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, series_uid
        ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[STUDY, "frame"])
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Mr^Seg", "MRSEG-7", "19800101", "F"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "101500", "7", "ACC7"
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = "MR", 4, i + 1, "test"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "2D"
        ds.EchoTime, ds.RepetitionTime, ds.EchoTrainLength, ds.MagneticFieldStrength = 12, 600, 1, 1.5
        ds.ImagingFrequency, ds.ImagedNucleus, ds.NumberOfAverages = 63.9, "1H", 1
        ds.PixelSpacing, ds.SliceThickness, ds.SpacingBetweenSlices = [1.0, 1.0], 3.0, 3.0
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-16.0, -16.0, 3.0 * i]
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = SIDE, SIDE, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = plane.tobytes()
        path = folder / f"mr-{uid_name(i)}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    random.Random(7).shuffle(paths)  # sent out of order
    return paths


def uid_name(i: int) -> str:
    return f"{(i * 7919) % 1000:03d}-{i}"


@pytest.fixture
def seg_model_file(tmp_path):
    import torch

    from medfl.models import create_model
    from medfl.models.weights import save_checkpoint, state_arrays

    torch.manual_seed(11)
    model = create_model("unet3d", in_channels=1, num_classes=2)
    torch.nn.init.normal_(model.head.weight)  # untrained, but not uniform: the SEG has both classes
    path = tmp_path / "seg.safetensors"
    save_checkpoint(path, state_arrays(model), {"model": "unet3d", "image_size": str(SIDE),
                                                "model_args": json.dumps({"in_channels": 1, "num_classes": 2})})
    return path


@pytest.fixture
def seg_site(tmp_path, seg_model_file):
    import torch

    from medfl.models import create_model
    from medfl.models.weights import save_checkpoint, state_arrays

    torch.manual_seed(3)
    cnn = tmp_path / "model.safetensors"
    save_checkpoint(cnn, state_arrays(create_model("cnn")), {"model": "cnn", "image_size": "64"})
    agent = PacsAgent(tmp_path, cnn)
    orthanc = SegOrthanc(tmp_path, agent.port)
    agent.configure(orthanc.dicom_port, seg_model_file=f'"{seg_model_file}"', series_quiet_s="2")
    yield orthanc, agent
    agent.close()
    orthanc.close()


def expected_labels(model_file: pathlib.Path, volume: np.ndarray) -> np.ndarray:
    """The model on the z-scored volume, zero-padded to its 32^3 patch, argmax, cropped: computed here."""
    import torch

    from medfl.models import create_model
    from medfl.models.weights import load_checkpoint, load_state_arrays

    arrays, meta = load_checkpoint(model_file)
    model = create_model(meta["model"], **json.loads(meta["model_args"]))
    load_state_arrays(model, arrays)
    model.eval()
    v = volume.astype(np.float32)
    v = (v - np.float32(v.mean())) / np.float32(v.std())
    x = torch.zeros(1, 1, SIDE, SIDE, SIDE)
    x[0, 0, :SLICES] = torch.from_numpy(v)
    with torch.no_grad():
        return model(x).argmax(1)[0, :SLICES].numpy().astype(np.uint8)


def seg_pixels(seg: Dataset, source_uids: list[str]) -> np.ndarray:
    import highdicom as hd

    buf = io.BytesIO()
    seg.save_as(buf)
    buf.seek(0)
    return hd.seg.segread(buf).get_pixels_by_source_instance(source_sop_instance_uids=source_uids,
                                                             combine_segments=True)


def test_mr_series_routed_by_orthanc_comes_back_as_one_seg(seg_site, tmp_path, seg_model_file):
    orthanc, agent = seg_site
    agent.start()
    series_uid = "1.2.826.0.1.3680043.8.498.9001.4"
    volume = mr_volume(1)
    paths = write_mr_series(tmp_path / "mr", volume, series_uid)
    proc = subprocess.run([STORESCU, "-aec", "ORTHANC", "127.0.0.1", str(orthanc.dicom_port), *map(str, paths)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (seg,) = wait_until("the SEG in Orthanc", lambda: orthanc.segs(), timeout=120, every=0.5)
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == STUDY and "AI RESULT" in seg.SeriesDescription
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    assert seg.SegmentationType == "BINARY" and len(seg.SegmentSequence) == 1
    segment = seg.SegmentSequence[0]
    assert segment.SegmentAlgorithmType == "AUTOMATIC" and segment.SegmentAlgorithmName == "medfl"
    assert "unet3d" in segment.SegmentAlgorithmName + seg.ManufacturerModelName
    ref = seg.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == series_uid
    by_z = [str(dcmread(p).SOPInstanceUID) for p in sorted(paths, key=lambda p: float(
        dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))]
    assert {str(r.ReferencedSOPInstanceUID) for r in ref.ReferencedInstanceSequence} == set(by_z)
    study = orthanc.get(f"/studies/{orthanc.get('/series/' + orthanc_series(orthanc, seg))['ParentStudy']}")
    assert study["MainDicomTags"]["StudyInstanceUID"] == STUDY and len(study["Series"]) == 2  # MR + SEG
    got = seg_pixels(seg, by_z)
    want = expected_labels(seg_model_file, volume)
    assert got.shape == (SLICES, SIDE, SIDE) and 0 < want.mean() < 1
    assert (got == want).all()
    if DCIODVFY is not None:
        (tmp_path / "seg.dcm").write_bytes(orthanc.get(f"/instances/{orthanc_instance(orthanc, seg)}/file"))
        check = subprocess.run([DCIODVFY, str(tmp_path / "seg.dcm")], capture_output=True, text=True, timeout=60)
        errors = [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], check.stdout + check.stderr
    wait_until("the delivery recorded", lambda: [r["status"] for r in agent.audit()] == ["sent"], timeout=30)
    (row,) = agent.audit()
    assert row["score_count"] == 1 and row["decision"] == "segmented" and row["sop_class"] == "series:MR"
    log = agent.log()
    assert "MRSEG-7" not in log and series_uid not in log and not any(u in log for u in by_z)


def orthanc_series(orthanc: SegOrthanc, ds: Dataset) -> str:
    (hit,) = [s["ID"] for s in orthanc.get("/series?expand")
              if s["MainDicomTags"].get("SeriesInstanceUID") == ds.SeriesInstanceUID]
    return str(hit)


def orthanc_instance(orthanc: SegOrthanc, ds: Dataset) -> str:
    return str(orthanc.get(f"/series/{orthanc_series(orthanc, ds)}")["Instances"][0])


def test_sigkill_mid_series_gives_exactly_one_seg(seg_site, tmp_path, seg_model_file):
    orthanc, agent = seg_site
    agent.start()
    series_uid = "1.2.826.0.1.3680043.8.498.9001.5"
    volume = mr_volume(2)
    paths = write_mr_series(tmp_path / "mr", volume, series_uid)
    first, rest = paths[:10], paths[10:]
    proc = subprocess.run([STORESCU, "-aec", "MEDFL", "127.0.0.1", str(agent.port), *map(str, first)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # acknowledged: on the agent's disk
    agent.kill(signal.SIGKILL)  # half a series received, its quiet period not over
    agent.start()
    proc = subprocess.run([STORESCU, "-aec", "MEDFL", "127.0.0.1", str(agent.port), *map(str, rest + first[:3])],
                          capture_output=True, text=True, timeout=120)  # the rest, and three sent again
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wait_until("the SEG delivered", lambda: [r["status"] for r in agent.audit()] == ["sent"], timeout=120)
    agent.kill(signal.SIGKILL)  # and once more after the SEG: a restart does not segment again
    agent.start()
    time.sleep(3)  # longer than the quiet period: a second segmentation would have begun
    (seg,) = orthanc.segs()
    ref = seg.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == series_uid and len(ref.ReferencedInstanceSequence) == SLICES
    by_z = [str(dcmread(p).SOPInstanceUID) for p in sorted(paths, key=lambda p: float(
        dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))]
    assert (seg_pixels(seg, by_z) == expected_labels(seg_model_file, volume)).all()
    (row,) = agent.audit()
    assert row["score_count"] == 1 and row["status"] == "sent"
    assert not list((tmp_path / "state" / "pacs" / "series").rglob("*.dcm"))
    assert len(orthanc.segs()) == 1
