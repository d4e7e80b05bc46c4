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

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

__all__ = ["SCORE_CODE", "build_sr"]

#: private coding scheme for the score (no standard code exists for "pneumonia probability")
SCORE_CODE = hd.sr.CodedConcept(value="MEDFL001", scheme_designator="99MEDFL", meaning="Pneumonia AI score")
PNEUMONIA = hd.sr.CodedConcept(value="233604007", scheme_designator="SCT", meaning="Pneumonia")
NORMAL = hd.sr.CodedConcept(value="17621005", scheme_designator="SCT", meaning="Normal")
RADIOGRAPHY = hd.sr.CodedConcept(value="363680008", scheme_designator="SCT", meaning="Radiographic imaging procedure")


def build_sr(source: Dataset, *, score: float, threshold: float, model_id: str, version: str,
             encrypted: bool = False) -> Dataset:
    """A Comprehensive SR with the AI result for ``source``.

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
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(entropy_srcs=["medfl-track", uid, model_id]),
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
        series_instance_uid=generate_uid(entropy_srcs=["medfl-sr-series", str(source.StudyInstanceUID)]),
        series_number=9901, sop_instance_uid=generate_uid(entropy_srcs=["medfl-sr", uid, model_id]),
        instance_number=1, manufacturer="medfl", is_complete=True, is_final=False, is_verified=False)
    sr.SeriesDescription = ("AI RESULT medfl encrypted inference (not verified)" if encrypted
                            else "AI RESULT medfl (not verified by a radiologist)")
    return sr
