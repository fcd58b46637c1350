"""AI results as DICOM objects for the PACS: a Structured Report and the heat map as a Secondary Capture.

The report is a Comprehensive 3D SR holding a TID 1500 Measurement Report (highdicom), as the IHE AI Results
profile expects of an AI result:

* observer: the AI model as a device (name, version, manufacturer);
* procedure reported: the task's imaging procedure (``TaskSpec.procedure``);
* one measurement group (TID 1501) with the decided **Finding** (SNOMED CT from ``TaskSpec.codes``, or this
  project's private scheme ``99CARE`` for a class without one), the algorithm (model name and version) and the
  operating-point threshold;
* one group per class with its calibrated **Probability** (DCM 122157, unit 1);
* a **Comment** with the review statement, and, once a radiologist gave a verdict, their reading;
* references to the source instances (the evidence).

A verdict does not edit a sent report: :func:`result_sr` with ``previous`` builds a new instance that names the
one it supersedes (Predecessor Documents), marked complete and verified by the radiologist.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from care_companion import REVIEW_WARNING
from care_companion.interop.dicom_inbox import RESULTS_MANUFACTURER as MANUFACTURER
from care_companion.interop.fhir import AiResult
from care_companion.tasks import SNOMED_CT, ClinicalCode, TaskSpec

PRIVATE_SCHEME = "99CARE"  # this project's private coding scheme (DICOM PS3.16: '99' prefix)
_SCHEMES = {SNOMED_CT: "SCT", "http://loinc.org": "LN"}
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902


def coded(code: ClinicalCode) -> Any:
    """A task's terminology code as a DICOM coded concept (SNOMED CT: SCT, LOINC: LN)."""
    from highdicom.sr import CodedConcept

    return CodedConcept(code.code, _SCHEMES.get(code.system, PRIVATE_SCHEME), code.display)


def class_concept(task: TaskSpec, label: str) -> Any:
    """A class of ``task`` as a coded concept: its terminology code, else this project's private one."""
    from highdicom.sr import CodedConcept

    code = task.codes.get(label)
    return coded(code) if code else CodedConcept(f"{task.name}-{label}", PRIVATE_SCHEME, f"{task.title}: {label}")


def model_uid(result: AiResult) -> str:
    """A stable DICOM UID for the model version (the device observer's)."""
    return str(generate_uid(entropy_srcs=[MANUFACTURER, result.model_name, result.model_version or ""]))


def random_uid(_key: str) -> str:
    """A new UID (the default UID source: each object built is a new instance)."""
    return str(generate_uid())


def result_sr(
    result: AiResult,
    sources: Sequence[Dataset],
    *,
    previous: Dataset | None = None,
    uid: Callable[[str], str] = random_uid,
) -> Dataset:
    """The AI result of ``sources`` (the study's films, DICOM) as a Comprehensive 3D SR.

    Args:
        result: the stored result, with its verdicts.
        sources: the source instances (at least one; patient and study attributes come from the first).
        previous: an earlier report of this result that this one supersedes (after a radiologist's verdict).
        uid: the UID of each new identifier by its role (``sr``, ``sr-series``, ``tracking-...``); a stable
            source builds the same instance again.

    Raises:
        ValueError: no source instance.
    """
    from highdicom.sr import (
        AlgorithmIdentification,
        CodedConcept,
        Comprehensive3DSR,
        DeviceObserverIdentifyingAttributes,
        Measurement,
        MeasurementReport,
        MeasurementsAndQualitativeEvaluations,
        ObservationContext,
        ObserverContext,
        QualitativeEvaluation,
        TextContentItem,
        TrackingIdentifier,
    )

    if not sources:
        raise ValueError(f"result {result.prediction_id}: a structured report needs the source instances")
    version = result.model_version or "unversioned"
    device = ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=model_uid(result),
            name=result.model_name,
            manufacturer_name=MANUFACTURER,
            model_name=f"{result.model_name} {version}",
        ),
    )
    algorithm = AlgorithmIdentification(name=result.model_name, version=version, manufacturer=MANUFACTURER)
    unit = codes.UCUM.NoUnits
    decision = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=uid("tracking"), identifier=f"AI result {result.prediction_id}"),
        algorithm_id=algorithm,
        qualitative_evaluations=[QualitativeEvaluation(codes.DCM.Finding, class_concept(result.task, result.label))],
        measurements=[
            Measurement(
                name=CodedConcept("threshold", PRIVATE_SCHEME, "Operating-point threshold"),
                value=float(result.threshold),
                unit=unit,
                algorithm_id=algorithm,
            )
        ],
    )
    per_class = [
        MeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(uid=uid(f"tracking-{name}"), identifier=f"P({name})"),
            finding_type=class_concept(result.task, name),
            algorithm_id=algorithm,
            measurements=[Measurement(name=codes.DCM.Probability, value=float(p), unit=unit, algorithm_id=algorithm)],
        )
        for name, p in result.probabilities.items()
    ]
    procedure = result.task.procedure
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=device),
        procedure_reported=coded(procedure)
        if procedure
        else CodedConcept(result.task.name, PRIVATE_SCHEME, result.task.title),
        imaging_measurements=[decision, *per_class],
    )
    comments = [f"AI finding, not a diagnosis: {result.label}. {REVIEW_WARNING}"]
    if result.verdicts:
        last = result.verdicts[-1]
        comments.append(
            f"Radiologist's reading: {last.true_label} ({'confirms the AI' if last.agrees else 'corrects the AI'})."
        )
    for text in comments:
        report[0].ContentSequence.append(TextContentItem(codes.DCM.Comment, text, relationship_type="CONTAINS"))
    verified = bool(result.verdicts)
    return Comprehensive3DSR(
        evidence=list(sources),
        content=report[0],
        series_instance_uid=uid("sr-series"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uid("sr"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=verified,
        is_final=verified,
        is_verified=verified,
        verifying_observer_name="Radiologist^Care Companion" if verified else None,
        verifying_organization=MANUFACTURER if verified else None,
        previous_versions=[previous] if previous is not None else None,
        series_description=f"AI result ({result.model_name} {version}), not a diagnosis",
    )


def heatmap_sc(
    source: Dataset, overlay_rgb: np.ndarray, *, model: str, uid: Callable[[str], str] = random_uid
) -> Dataset:
    """The heat map laid over a source film as a Secondary Capture in the source's study (RGB, 8 bits; ``uid``:
    the UIDs of its series and instance by role, ``sc-series`` and ``sc``)."""
    from highdicom.sc import SCImage

    return SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=np.ascontiguousarray(overlay_rgb, dtype=np.uint8),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=uid("sc-series"),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=uid("sc"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "F"),
        series_description=f"AI heat map ({model}), not a diagnosis",
    )
