"""The result as a DICOM Comprehensive SR (TID 1500 measurement report), built with highdicom.

The SR sits in the scored image's study, references the image, carries the score (a
measurement), the decision at the configured threshold (a qualitative finding), and the
algorithm (name and model id), observed by a device: it is marked as an AI result. Its UIDs are
derived from the source instance and the model, so a re-sent SR replaces, never duplicates.

References
----------
.. [1] DICOM PS3.16 TID 1500 (Measurement Report), TID 4019 (Algorithm Identification).
"""

from __future__ import annotations

import collections
import datetime
import io
import threading
from typing import Any

import highdicom as hd
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from pydicom.valuerep import DA, DS, DT, TM

__all__ = ["SCORE_CODE", "build_sr", "build_sr_highdicom"]

#: private coding scheme for the score (no standard code exists for "pneumonia probability")
SCORE_CODE = hd.sr.CodedConcept(value="MEDFL001", scheme_designator="99MEDFL", meaning="Pneumonia AI score")
PNEUMONIA = hd.sr.CodedConcept(value="233604007", scheme_designator="SCT", meaning="Pneumonia")
NORMAL = hd.sr.CodedConcept(value="17621005", scheme_designator="SCT", meaning="Normal")
RADIOGRAPHY = hd.sr.CodedConcept(value="363680008", scheme_designator="SCT", meaning="Radiographic imaging procedure")


def build_sr_highdicom(source: Dataset, *, score: float, threshold: float, model_id: str, version: str,
                       encrypted: bool = False) -> Dataset:
    """A Comprehensive SR with the AI result for ``source``, built by highdicom from scratch.

    Parameters
    ----------
    source : Dataset
        The scored image.
    score : float
        Pneumonia probability in [0, 1].
    threshold : float
        Decision threshold (score >= threshold -> pneumonia).
    model_id : str
        Which model produced the score.
    version : str
        medfl's version.
    encrypted : bool
        The score came from encrypted inference (the hospital does not hold the model); the
        algorithm name and the series description say so.
    """
    uid = str(source.SOPInstanceUID)
    name = "medfl pneumonia classifier" + (" (encrypted inference)" if encrypted else "")
    algo = hd.sr.AlgorithmIdentification(name=name, version=f"{version} {model_id}"[:64])
    device = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["medfl-device", model_id]), name="medfl AI", manufacturer_name="medfl",
            model_name=model_id[:64]))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=_track_uid(uid, model_id),
                                                     identifier="medfl AI result"),
        algorithm_id=algo,
        measurements=[hd.sr.Measurement(name=SCORE_CODE, value=round(float(score), 6), unit=codes.UCUM.NoUnits,
                                        algorithm_id=algo)],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=codes.DCM.Finding,
                                                             value=PNEUMONIA if score >= threshold else NORMAL)],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )
    report = hd.sr.MeasurementReport(observation_context=hd.sr.ObservationContext(observer_device_context=device),
                                     procedure_reported=RADIOGRAPHY, imaging_measurements=[group])
    sr = hd.sr.ComprehensiveSR(
        evidence=[source], content=report,
        series_instance_uid=_series_uid(str(source.StudyInstanceUID)),
        series_number=9901, sop_instance_uid=_sr_uid(uid, model_id),
        instance_number=1, manufacturer="medfl", is_complete=True, is_final=False, is_verified=False)
    sr.SeriesDescription = ("AI RESULT medfl encrypted inference (not verified)" if encrypted
                            else "AI RESULT medfl (not verified by a radiologist)")
    return sr


def _sr_uid(source_uid: str, model_id: str) -> str:
    return str(generate_uid(entropy_srcs=["medfl-sr", source_uid, model_id]))


def _track_uid(source_uid: str, model_id: str) -> str:
    return str(generate_uid(entropy_srcs=["medfl-track", source_uid, model_id]))


def _series_uid(study_uid: str) -> str:
    return str(generate_uid(entropy_srcs=["medfl-sr-series", study_uid]))


# ---- the same SR, fast: a highdicom-built template per source layout, patched per image ----------
#
# highdicom builds and validates the whole content tree for every SR (about 75 ms of CPU per image
# here, the largest per-image cost of the PACS hook after the model). Within a burst every image
# has the same layout, so the SR of the first image of a layout is kept (serialised) and the next
# ones are patched: the UIDs derived from the source, the patient/study attributes highdicom
# copied, the score, and the creation times. test_pacs_units checks that a patched SR equals
# highdicom's own for varied sources, element for element (times aside).

#: Patient and General Study module attributes that a Comprehensive SR takes from its evidence.
_COPIED = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
           "PatientSize", "PatientWeight", "OtherPatientIDsSequence", "EthnicGroup", "PatientComments",
           "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
           "StudyDescription", "IssuerOfAccessionNumberSequence", "PatientIdentityRemoved",
           "DeidentificationMethod")
_TEMPLATES: collections.OrderedDict[tuple[Any, ...], tuple[bytes, Dataset, tuple[str, ...]]] = \
    collections.OrderedDict()
_TEMPLATES_MAX = 16
_LOCK = threading.Lock()


def _layout(source: Dataset) -> tuple[Any, ...]:
    """What decides the SR's structure besides the result: the source's top-level elements and emptiness."""
    return tuple((int(e.tag), e.VR, e.VM > 0 and e.value not in ("", None)) for e in source
                 if e.tag.group != 0x7FE0)


def build_sr(source: Dataset, *, score: float, threshold: float, model_id: str, version: str,
             encrypted: bool = False) -> Dataset:
    """A Comprehensive SR with the AI result for ``source`` (see :func:`build_sr_highdicom`).

    The first source of each layout (its top-level elements, model, decision) is built by
    highdicom and kept as a template; later ones patch a copy of it, which gives the same data
    set at a fraction of the cost.
    """
    decision = float(score) >= threshold
    key = (model_id, version, encrypted, decision, str(source.SOPClassUID), _layout(source))
    with _LOCK:
        hit = _TEMPLATES.get(key)
        if hit is not None:
            _TEMPLATES.move_to_end(key)
    if hit is None:
        sr = build_sr_highdicom(source, score=score, threshold=threshold, model_id=model_id, version=version,
                                encrypted=encrypted)
        buf = io.BytesIO()
        sr.save_as(buf, enforce_file_format=True)
        proto = Dataset()
        for kw in (*_COPIED, "SOPInstanceUID", "SOPClassUID", "SeriesInstanceUID"):
            if kw in source:
                proto[kw] = source[kw]
        copied = tuple(kw for kw in _COPIED if kw in sr and kw in source and sr[kw].value == source[kw].value)
        with _LOCK:
            _TEMPLATES[key] = (buf.getvalue(), proto, copied)
            while len(_TEMPLATES) > _TEMPLATES_MAX:
                _TEMPLATES.popitem(last=False)
        return sr
    blob, proto, copied = hit
    return _patch(dcmread(io.BytesIO(blob)), proto, source, copied, score=float(score), model_id=model_id)


def _patch(sr: Dataset, proto: Dataset, source: Dataset, copied: tuple[str, ...], *, score: float,
           model_id: str) -> Dataset:
    old_uid, new_uid = str(proto.SOPInstanceUID), str(source.SOPInstanceUID)
    uids = {old_uid: new_uid, _sr_uid(old_uid, model_id): _sr_uid(new_uid, model_id),
            _track_uid(old_uid, model_id): _track_uid(new_uid, model_id),
            _series_uid(str(proto.StudyInstanceUID)): _series_uid(str(source.StudyInstanceUID))}
    for kw in ("StudyInstanceUID", "SeriesInstanceUID"):
        uids[str(proto[kw].value)] = str(source[kw].value)
    for kw in copied:
        sr[kw].value = source[kw].value
    value = round(score, 6)

    def walk(ds: Dataset) -> None:
        for elem in ds:
            if elem.VR == "SQ":
                for item in elem.value:
                    walk(item)
            elif elem.VR == "UI" and isinstance(elem.value, str) and elem.value in uids:
                elem.value = uids[elem.value]
        if "MeasuredValueSequence" in ds:
            for item in ds.MeasuredValueSequence:
                item.NumericValue = DS(value, auto_format=True)
                item.FloatingPointValue = value

    walk(sr)
    now = datetime.datetime.now()
    sr.InstanceCreationDate, sr.InstanceCreationTime = DA(now.date()), TM(now.time())
    sr.ContentDate, sr.ContentTime = DA(now.date()), TM(now.time())
    for item in sr.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = DT(now)
    return sr
