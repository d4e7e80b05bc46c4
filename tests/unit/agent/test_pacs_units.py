"""PACS building blocks without a network: durable queue, audit, validation, preprocessing, SR."""

from __future__ import annotations

import io

import numpy as np
import pytest
from pydicom import dcmread

from agent.pacs import report
from agent.pacs.audit import AuditLog
from agent.pacs.inbox import DurableQueue, Quarantine, uid_hash
from agent.pacs.report import build_sr, build_sr_highdicom
from agent.pacs.scoring import check_dataset, preprocess
from medfl.data.dicom import synthetic_cr


def test_queue_claim_release_recover(tmp_path):
    q = DurableQueue(tmp_path / "q")
    a = q.put("a" * 64, b"one")
    q.put("b" * 64, b"two")
    assert a.read_bytes() == b"one" and q.pending() == 2
    first = q.claim()
    second = q.claim()
    assert {first.name, second.name} == {"a" * 64 + ".dcm", "b" * 64 + ".dcm"} and q.claim() is None
    q.release(first)
    assert q.claim() is not None
    assert q.recover() == 2  # a crash: everything claimed goes back
    assert len(list(q.new.glob("*.dcm"))) == 2
    q.done(q.claim())
    assert q.pending() == 1
    assert not list(q.root.rglob("*.tmp"))


def test_quarantine_reason_file(tmp_path):
    base = Quarantine(tmp_path).put("c" * 64, b"bytes", "bad thing", 0xA900, source="test")
    doc = base.with_suffix(".reason.json").read_text()
    assert "0xA900" in doc and "bad thing" in doc and base.with_suffix(".dcm").read_bytes() == b"bytes"


def test_audit_scores_exactly_once():
    log = AuditLog(":memory:")
    key = uid_hash("1.2.3")
    assert len(key) == 64 and "1.2.3" not in key
    log.received(key, "CR")
    assert not log.is_scored(key)
    assert log.scored(key, score=0.7, decision="pneumonia", model_id="m", model_round=1, sr_sha256="s")
    assert not log.scored(key, score=0.1, decision="normal", model_id="m", model_round=1, sr_sha256="s")
    row = log.row(key)
    assert row["score"] == 0.7 and row["score_count"] == 1 and log.is_scored(key)
    log.sent("s")
    assert log.row(key)["status"] == "sent"
    log.failed(key, "quarantined", "late failure")  # never overrides a committed result
    assert log.row(key)["status"] == "sent"


def _cr(**kw):
    return synthetic_cr(np.linspace(0, 1, 64 * 48).reshape(64, 48), patient_id="U1", **kw)


def test_validation_classes():
    assert check_dataset(_cr()) is None
    ds = _cr()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    assert check_dataset(ds).status == 0x0122
    ds = _cr()
    del ds.PixelData
    assert check_dataset(ds).status == 0xA900
    ds = _cr()
    ds.NumberOfFrames = 2
    assert "multi-frame" in check_dataset(ds).reason
    ds = _cr()
    ds.PhotometricInterpretation = "RGB"
    assert "photometric" in check_dataset(ds).reason


def test_monochrome1_and_voi_preprocessing():
    m2 = preprocess(_cr(), 32)
    m1 = preprocess(_cr(monochrome1=True), 32)
    np.testing.assert_allclose(m1, m2, atol=2e-3)  # MONOCHROME1 is inverted back
    assert m2.shape == (32, 32) and m2.min() >= 0 and m2.max() <= 1
    ds = _cr()
    ds.WindowCenter, ds.WindowWidth = 1000, 500
    windowed = preprocess(ds, 32)
    assert (windowed == 0).mean() > 0.1 and (windowed == 1).mean() > 0.1  # clipped by the window


def test_sr_is_deterministic_and_references_the_image():
    src = _cr()
    src.SOPInstanceUID = src.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.42"
    a = build_sr(src, score=0.8, threshold=0.5, model_id="cnn:j:round-3", version="0.1.0")
    b = build_sr(src, score=0.8, threshold=0.5, model_id="cnn:j:round-3", version="0.1.0")
    assert a.SOPInstanceUID == b.SOPInstanceUID and a.StudyInstanceUID == src.StudyInstanceUID
    buf = io.BytesIO()
    a.save_as(buf, enforce_file_format=True)
    text = str(dcmread(io.BytesIO(buf.getvalue())))
    assert "Pneumonia AI score" in text and "0.8" in text and src.SOPInstanceUID in text
    assert build_sr(src, score=0.8, threshold=0.5, model_id="other", version="0.1.0").SOPInstanceUID != a.SOPInstanceUID


@pytest.mark.parametrize("key", ["../../etc/passwd", "1.2.3/../x"])
def test_uids_never_reach_paths(key, tmp_path):
    q = DurableQueue(tmp_path)
    path = q.put(uid_hash(key), b"x")
    assert path.parent == q.new and ".." not in path.name


def test_unsupported_transfer_syntax_is_refused_and_quarantined(tmp_path):
    from pydicom.encaps import encapsulate

    from agent.config import AgentConfig
    from agent.pacs.service import PacsService
    from medfl import config

    cfg = config.parse(AgentConfig, {
        "agent": {"name": "u", "state_dir": str(tmp_path / "state")},
        "coordinator": {"endpoint": "tcp://127.0.0.1:1"}, "data": {"path": str(tmp_path)},
        "transport": {"curve": False}, "pacs": {"enabled": True}})
    service = PacsService(cfg)
    try:
        ds = _cr()
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder for radiographs
        ds.PixelData = encapsulate([b"\x00" * 64])
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        status, reason = service.accept(buf.getvalue(), source="test")
        assert status == 0xC000 and "no decoder" in reason
        status, reason = service.accept(b"\x00" * 200 + b"garbage", source="test")
        assert status == 0xC000 and "cannot parse" in reason
        assert len(list((tmp_path / "state" / "pacs" / "quarantine").glob("*.reason.json"))) == 2
        assert [r["status"] for r in service.audit.rows()] == ["quarantined", "quarantined"]
        assert service.inbox.pending() == 0
        good = io.BytesIO()
        _cr().save_as(good, enforce_file_format=True)
        assert service.accept(good.getvalue(), source="test") == (0, "")
        assert service.inbox.pending() == 1
    finally:
        service.audit.close()


def test_scorer_rebuilds_the_model_with_its_job_arguments(tmp_path):
    import json

    from agent.pacs.scoring import Scorer
    from medfl.errors import StateError
    from medfl.models import create_model
    from medfl.models.weights import save_checkpoint, state_arrays

    narrow = tmp_path / "models" / "job" / "round-0001.safetensors"
    save_checkpoint(narrow, state_arrays(create_model("cnn", width=8)),
                    {"job_id": "job", "round": "1", "model": "cnn", "model_args": json.dumps({"width": 8}),
                     "image_size": "32"})
    score, model = Scorer(model_file=None, models_dir=tmp_path / "models").score(_cr())
    assert 0.0 <= score <= 1.0 and model.model_id == "cnn:job:round-1" and model.image_size == 32
    wrong = tmp_path / "wrong.safetensors"
    save_checkpoint(wrong, state_arrays(create_model("cnn", width=8)), {"model": "cnn"})
    with pytest.raises(StateError, match="does not fit model 'cnn'"):
        Scorer(model_file=wrong, models_dir=tmp_path).score(_cr())


def test_claim_many_takes_the_oldest_first_up_to_the_limit(tmp_path):
    import os

    q = DurableQueue(tmp_path / "q")
    for i, key in enumerate("cab"):
        p = q.put(key * 64, key.encode())
        os.utime(p, ns=(1_000_000_000 * (i + 1), 1_000_000_000 * (i + 1)))
    taken = q.claim_many(2)
    assert [p.name[0] for p in taken] == ["c", "a"] and q.pending() == 3
    assert [p.name[0] for p in q.claim_many(5)] == ["b"] and q.claim_many(5) == []
    with pytest.raises(ValueError):
        q.claim_many(0)


def test_batched_scores_equal_one_at_a_time(tmp_path):
    import json

    import torch

    from agent.pacs.scoring import Scorer
    from medfl.models import create_model
    from medfl.models.weights import save_checkpoint, state_arrays

    torch.manual_seed(3)
    model = create_model("cnn", width=8)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)  # the zero-initialised head would score everything 0.5
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, state_arrays(model), {"model": "cnn", "model_args": json.dumps({"width": 8}),
                                                "image_size": "32"})
    scorer = Scorer(model_file=path, models_dir=tmp_path)
    loaded = scorer.current()
    rng = np.random.default_rng(0)
    images = [preprocess(synthetic_cr(rng.random((40, 36)), patient_id="U1"), loaded.image_size) for _ in range(5)]
    batched = scorer.predict(loaded, images)
    single = [scorer.predict(loaded, [im])[0] for im in images]
    assert len(batched) == 5 and len(set(np.round(batched, 6))) > 1
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-6)


_TIMES = ("00080012", "00080013", "00080023", "00080033")  # creation and content date/time


def _json_without_times(ds) -> dict:
    d = ds.to_json_dict()
    for tag in _TIMES:
        d.pop(tag, None)
    for item in d.get("0018A001", {}).get("Value", []):  # ContributingEquipmentSequence
        item.pop("0018A002", None)  # ContributionDateTime
    return d


def _varied_sources() -> list:
    rng = np.random.default_rng(11)  # test images only
    out = []
    for i in range(4):
        ds = synthetic_cr(rng.random((16, 16)), patient_id=f"P{i}")
        if i % 2:
            ds.PatientBirthDate, ds.AccessionNumber, ds.StudyDescription = "19800101", f"A{i}", "CHEST PA"
            ds.PatientName = f"DOE^JANE{i}"
        out.append(ds)
    return out


@pytest.mark.parametrize("encrypted", [False, True])
@pytest.mark.parametrize("scores", [(0.8, 0.91), (0.1, 0.2), (0.8, 0.2)])
def test_patched_sr_equals_highdicom_sr(encrypted, scores):
    """The template fast path gives highdicom's SR element for element (creation times aside)."""
    report._TEMPLATES.clear()
    srcs = _varied_sources()
    kw = {"threshold": 0.5, "model_id": "cnn:j:round-3", "version": "0.1.0", "encrypted": encrypted}
    for first, second in ((srcs[0], srcs[2]), (srcs[1], srcs[3]), (srcs[0], srcs[1])):
        build_sr(first, score=scores[0], **kw)  # fills the template of this layout (and decision)
        fast = build_sr(second, score=scores[1], **kw)
        slow = build_sr_highdicom(second, score=scores[1], **kw)
        assert _json_without_times(fast) == _json_without_times(slow)
        assert fast.SOPInstanceUID != build_sr_highdicom(first, score=scores[0], **kw).SOPInstanceUID
        buf = io.BytesIO()
        fast.save_as(buf, enforce_file_format=True)  # still a valid file
        assert dcmread(io.BytesIO(buf.getvalue())).PatientID == second.PatientID
    assert 0 < len(report._TEMPLATES) <= report._TEMPLATES_MAX


def test_sr_template_is_reused_within_a_layout(monkeypatch):
    report._TEMPLATES.clear()
    calls = []
    real = report.build_sr_highdicom
    monkeypatch.setattr(report, "build_sr_highdicom", lambda *a, **k: calls.append(1) or real(*a, **k))
    srcs = _varied_sources()
    for ds in (srcs[0], srcs[2], srcs[0], srcs[2]):
        build_sr(ds, score=0.7, threshold=0.5, model_id="m", version="v")
    assert len(calls) == 1  # one highdicom build for the layout, three patched copies
    build_sr(srcs[1], score=0.7, threshold=0.5, model_id="m", version="v")  # another layout
    build_sr(srcs[0], score=0.2, threshold=0.5, model_id="m", version="v")  # another decision
    assert len(calls) == 3


def test_pacs_section_range_checks():
    from agent.config import PacsSection

    assert PacsSection().check() == []
    bad = dict(PacsSection(senders=0, workers=0, max_batch=300).check())
    assert "must be 1-16" in bad["senders"] and "must be 1-64" in bad["workers"] and "1-256" in bad["max_batch"]
