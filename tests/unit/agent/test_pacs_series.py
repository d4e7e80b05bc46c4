"""CT/MR series assembly and segmentation: quiet period, duplicates, restart, slice order, quarantine."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from agent.pacs.audit import AuditLog
from agent.pacs.inbox import DurableQueue, Quarantine, uid_hash
from agent.pacs.scoring import Scorer
from agent.pacs.seg import order_slices, predict_labels, seg_uids, volume_of
from agent.pacs.series import SeriesPipeline, SeriesStore
from medfl.errors import DataError

STUDY = "1.2.826.0.1.3680043.8.498.77"
SERIES = "1.2.826.0.1.3680043.8.498.77.1"


def ct_slice(i: int, *, series: str = SERIES, modality: str = "CT", rows: int = 16, cols: int = 16,
             position: bool = True, number: bool = True, z: float | None = None) -> Dataset:
    """One CT (or MR) Image Storage slice of a 16x16xN test volume, slice ``i`` at z = 2 i mm."""
    sop_class = "1.2.840.10008.5.1.4.1.1.2" if modality == "CT" else "1.2.840.10008.5.1.4.1.1.4"
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    uid = generate_uid(entropy_srcs=[series, str(i)])
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.SOPClassUID, ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = sop_class, uid, STUDY, series
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[STUDY, "frame of reference"])
    ds.Modality, ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = modality, "Seg^Test", "S1", "", "O"
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20260101", "1200", "1"
    ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
    ds.SeriesNumber, ds.Manufacturer, ds.ImageType = 3, "test", ["ORIGINAL", "PRIMARY", "AXIAL"]
    if number:
        ds.InstanceNumber = i + 1
    ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 2.0
    if position:
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, 2.0 * i if z is None else z]
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.PixelData = ((np.arange(rows * cols).reshape(rows, cols) * (i + 1)) % 4000).astype(np.uint16).tobytes()
    return ds


def encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def seg_model(tmp_path_factory):
    import torch

    from medfl.models import create_model
    from medfl.models.weights import save_checkpoint, state_arrays

    torch.manual_seed(5)
    model = create_model("unet3d", in_channels=1, num_classes=2)
    torch.nn.init.normal_(model.head.weight)  # the head starts at zero (uniform classes): make it decide
    path = tmp_path_factory.mktemp("model") / "seg.safetensors"
    save_checkpoint(path, state_arrays(model), {"model": "unet3d", "image_size": "16",
                                                "model_args": json.dumps({"in_channels": 1, "num_classes": 2})})
    return path


class Node:
    """The series path wired as the service wires it, with a fake clock."""

    def __init__(self, root, model_file, quiet_s: float = 2.0, clock: FakeClock | None = None):
        self.clock = clock or FakeClock()
        self.root = root
        self.audit = AuditLog(root / "audit.sqlite")
        self.outbox = DurableQueue(root / "outbox")
        self.quarantine = Quarantine(root / "quarantine")
        self.store = SeriesStore(root / "series", quiet_s=quiet_s, clock=self.clock)
        self.pipe = SeriesPipeline(store=self.store, audit=self.audit, quarantine=self.quarantine,
                                   outbox=self.outbox, scorer=Scorer(model_file=model_file, models_dir=root))

    def send(self, ds: Dataset) -> tuple[int, str]:
        return self.pipe.accept(ds, encode(ds), source="test")

    def drain(self) -> None:
        while self.pipe.step():
            pass

    def segs(self) -> list[Dataset]:
        return [dcmread(p) for p in sorted(self.outbox.new.glob("*.dcm"))]

    def reasons(self) -> list[str]:
        return sorted({json.loads(p.read_text())["reason"] for p in self.quarantine.root.glob("*.reason.json")})

    def row(self, series: str = SERIES) -> dict:
        return self.audit.row(uid_hash(series)) or {}


def test_series_completes_only_after_the_quiet_period(tmp_path, seg_model):
    node = Node(tmp_path, seg_model)
    for i in range(8):
        assert node.send(ct_slice(i)) == (0, "")
        node.clock.t += 1.5  # each gap is shorter than the quiet period
        node.drain()
        assert node.segs() == []
    node.clock.t += 0.4  # 1.9 s since the last instance
    node.drain()
    assert node.segs() == [] and node.store.pending() == 1
    node.clock.t += 0.2
    node.drain()
    segs = node.segs()
    assert len(segs) == 1 and node.store.pending() == 0
    seg = segs[0]
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == STUDY and "AI RESULT" in seg.SeriesDescription
    assert (str(seg.SeriesInstanceUID), str(seg.SOPInstanceUID)) == seg_uids(SERIES)
    assert int(seg.NumberOfFrames) == 8  # one segment (num_classes=2), every slice
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    assert seg.SegmentSequence[0].SegmentAlgorithmName == "medfl"
    refs = {str(r.ReferencedSOPInstanceUID) for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert refs == {str(ct_slice(i).SOPInstanceUID) for i in range(8)}
    row = node.row()
    assert row["status"] == "scored" and row["score_count"] == 1 and row["decision"] == "segmented"


def test_duplicate_instances_count_once(tmp_path, seg_model):
    node = Node(tmp_path, seg_model)
    for i in [0, 1, 2, 2, 3, 4, 5, 6, 7, 0]:
        node.send(ct_slice(i))
    assert node.send(ct_slice(3)) == (0, "duplicate instance")
    assert len(list((tmp_path / "series" / "open" / uid_hash(SERIES)).glob("*.dcm"))) == 8
    node.clock.t += 5
    node.drain()
    (seg,) = node.segs()
    assert int(seg.NumberOfFrames) == 8


def test_half_received_series_is_completed_once_after_a_restart(tmp_path, seg_model):
    node = Node(tmp_path, seg_model)
    for i in range(5):
        node.send(ct_slice(i))
    node.audit.close()  # "killed": nothing but the folders and the audit database survive
    clock = FakeClock()
    node = Node(tmp_path, seg_model, clock=clock)
    assert node.store.recover() == 1
    for i in range(5, 8):
        node.send(ct_slice(i))
    clock.t += 1.0
    node.drain()
    assert node.segs() == []
    clock.t += 1.5
    node.drain()
    (seg,) = node.segs()
    assert int(seg.NumberOfFrames) == 8 and node.row()["score_count"] == 1
    # an instance re-sent after the series was segmented: acknowledged, kept in the quarantine, not segmented again
    node.outbox.done(next(node.outbox.new.glob("*.dcm")))
    assert node.send(ct_slice(2)) == (0, "series already segmented")
    assert node.segs() == [] and node.row()["score_count"] == 1
    assert any("arrived after its series" in r for r in node.reasons())


def test_restart_while_segmenting_recovers_the_claimed_series(tmp_path, seg_model):
    node = Node(tmp_path, seg_model)
    for i in range(8):
        node.send(ct_slice(i))
    node.clock.t += 3
    assert node.store.complete_quiet() == [uid_hash(SERIES)]
    assert node.store.claim() == uid_hash(SERIES)  # the worker took it, then the process died
    node.audit.close()
    node = Node(tmp_path, seg_model)
    assert node.store.recover() == 1
    node.drain()
    assert len(node.segs()) == 1 and node.row()["score_count"] == 1


def test_slices_sort_along_the_normal_then_by_instance_number():
    slices = [ct_slice(i) for i in range(8)]
    shuffled = slices[:]
    random.Random(1).shuffle(shuffled)
    assert [int(d.InstanceNumber) for d in order_slices(shuffled)] == list(range(1, 9))
    # positions win over instance numbers: reverse the numbers, the order stays spatial
    for d in shuffled:
        d.InstanceNumber = 100 - int(d.InstanceNumber)
    assert [float(d.ImagePositionPatient[2]) for d in order_slices(shuffled)] == [2.0 * i for i in range(8)]
    # an oblique stack: sorted by the projection on the normal, not by z
    for d in shuffled:
        d.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # coronal: normal is (0, 1, 0)
        z = float(d.ImagePositionPatient[2])
        d.ImagePositionPatient = [0.0, -z, 5.0]
    assert [float(d.ImagePositionPatient[1]) for d in order_slices(shuffled)] == [-2.0 * i for i in range(7, -1, -1)]
    # no positions at all: InstanceNumber
    bare = [ct_slice(i, position=False) for i in range(8)]
    random.Random(2).shuffle(bare)
    ordered = order_slices(bare)
    assert [int(d.InstanceNumber) for d in ordered] == list(range(1, 9))
    vol = volume_of(ordered)
    assert vol.shape == (8, 16, 16) and vol[3, 0, 1] == 4.0  # slice i holds (index * (i + 1)) % 4000


def test_predict_labels_is_the_model_on_the_padded_volume(seg_model):
    import torch

    loaded = Scorer(model_file=seg_model, models_dir=seg_model.parent).current()
    vol = volume_of(order_slices([ct_slice(i) for i in range(8)]))
    labels, classes = predict_labels(loaded.model, vol, patch=(16, 16, 16))
    x = torch.zeros(1, 1, 16, 16, 16)
    x[0, 0, :8] = torch.from_numpy((vol - vol.mean()) / vol.std())
    with torch.no_grad():
        want = loaded.model(x).argmax(1)[0, :8].numpy()  # type: ignore[operator]
    assert classes == 2 and labels.shape == (8, 16, 16) and (labels == want).all()
    assert 0 < labels.mean() < 1  # the test model is not constant
    big, _ = predict_labels(loaded.model, np.concatenate([vol] * 4), patch=(16, 16, 16))  # sliding window
    assert big.shape == (32, 16, 16)


@pytest.mark.parametrize(("bad", "reason"), [
    (lambda s: s[3].__setattr__("Rows", 8) or s[3].__setattr__("PixelData", bytes(8 * 16 * 2)),
     "slices of different sizes (Rows x Columns 8x16, 16x16)"),
    (lambda s: [d.__delattr__(a) for d in s[:1] for a in ("ImagePositionPatient", "InstanceNumber")],
     "cannot order the slices: an instance has neither ImagePositionPatient"),
    (lambda s: s[5].__setattr__("Modality", "MR"), "mixed or unsupported modalities in one series: CT, MR"),
    (lambda s: s[2].__setattr__("NumberOfFrames", 2), "a multi-frame image (2 frames) in the series"),
    (lambda s: s[6].file_meta.__setattr__("TransferSyntaxUID", JPEG2000Lossless) or
     s[6].__setattr__("PixelData", b"\xff\x4f\xff\x51" + bytes(60)),
     "cannot decode the pixel data (transfer syntax JPEG 2000 Image Compression (Lossless Only))"),
    (lambda s: s[4].ImagePositionPatient.__setitem__(2, 0.0), "two slices share one ImagePositionPatient"),
])
def test_inconsistent_series_is_quarantined_with_its_reason(tmp_path, seg_model, bad, reason):
    node = Node(tmp_path, seg_model)
    slices = [ct_slice(i) for i in range(8)]
    bad(slices)
    for ds in slices:
        if ds.file_meta.TransferSyntaxUID == JPEG2000Lossless:
            from pydicom.encaps import encapsulate

            ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(60)])
            ds["PixelData"].VR = "OB"
        assert node.send(ds)[0] == 0  # acknowledged: checked when the series is complete
    node.clock.t += 3
    node.drain()  # never raises
    assert node.segs() == [] and node.store.pending() == 0
    row = node.row()
    assert row["status"] == "quarantined" and row["reason"].startswith(reason), row["reason"]
    assert node.reasons() == [row["reason"]]
    assert len(list(node.quarantine.root.glob("*.dcm"))) == 8  # every acknowledged instance kept


def test_a_series_without_a_uid_is_refused(tmp_path, seg_model):
    node = Node(tmp_path, seg_model)
    ds = ct_slice(0)
    del ds.SeriesInstanceUID
    status, why = node.send(ds)
    assert status == 0xA900 and "no SeriesInstanceUID" in why


def test_volume_of_rejects_undecodable_pixels():
    ds = ct_slice(0)
    ds.PixelData = bytes(10)
    with pytest.raises(DataError, match="cannot decode the pixel data"):
        volume_of([ds])


def test_a_classifier_as_seg_model_is_refused_at_start(tmp_path):
    import torch

    from medfl.errors import StateError
    from medfl.models import create_model
    from medfl.models.weights import save_checkpoint, state_arrays

    torch.manual_seed(0)
    path = tmp_path / "cnn.safetensors"
    save_checkpoint(path, state_arrays(create_model("cnn")), {"model": "cnn", "image_size": "64"})
    node = Node(tmp_path, path)
    with pytest.raises(StateError, match="cannot segment one-channel volumes.*classification model"):
        node.pipe.check_model()


def test_an_outbox_failure_gives_the_series_back(tmp_path, seg_model):
    node = Node(tmp_path, seg_model)
    for i in range(8):
        node.send(ct_slice(i))
    node.clock.t += 3

    def full(key: str, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    real, node.outbox.put = node.outbox.put, full
    with pytest.raises(OSError):
        node.pipe.step()
    assert node.segs() == [] and node.store.pending() == 1 and node.row()["score_count"] == 0
    node.outbox.put = real
    node.drain()
    assert len(node.segs()) == 1 and node.row()["score_count"] == 1
