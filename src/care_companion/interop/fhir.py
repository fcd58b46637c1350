"""AI results as FHIR R4B resources: a DiagnosticReport, its Observation and the AI model as a Device.

FHIR version: **R4B (4.3.0)**, through ``fhir.resources`` 8.x (which ships R5 and R4B, not R4 4.0.1). R4B
changed nothing in DiagnosticReport, Observation or Device that an R4 server would reject for the fields used
here. ``fhir.resources`` checks structure and types but not value sets, so every coded status is checked here
against its value set before a resource is built (:func:`checked`).

Status of a result (the same rule for the report and its observation):

* ``preliminary``: the AI's answer, no radiologist's verdict yet;
* ``final``: a radiologist gave a verdict (confirmed or corrected the AI: the conclusion is then theirs);
* ``amended``: a later verdict changed an earlier one's label.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from care_companion import REVIEW_WARNING
from care_companion.errors import RequestError
from care_companion.records.models import Feedback, Prediction, Study
from care_companion.tasks import ClinicalCode, TaskSpec, get_task

FHIR_VERSION = "4.3.0"  # R4B
FHIR_MEDIA_TYPE = "application/fhir+json"
LOINC = "http://loinc.org"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
UCUM = "http://unitsofmeasure.org"
MRN_SYSTEM = "urn:care-companion:mrn"  # the patient identifier system when the site configures none

# value sets fhir.resources does not enforce (R4B: DiagnosticReport.status, Observation.status)
REPORT_STATUSES = frozenset(
    {"registered", "partial", "preliminary", "final", "amended", "corrected", "appended", "cancelled"}
    | {"entered-in-error", "unknown"}
)
OBSERVATION_STATUSES = frozenset(
    {"registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error", "unknown"}
)
_ID = re.compile(r"[^A-Za-z0-9\-.]")


@dataclass(frozen=True)
class Verdict:
    """A radiologist's verdict on a result."""

    true_label: str
    agrees: bool
    at: datetime
    comment: str = ""


@dataclass(frozen=True)
class AiResult:
    """What a FHIR result is built from: one stored prediction with its study, patient and verdicts."""

    prediction_id: int
    task: TaskSpec
    label: str
    probabilities: dict[str, float]
    threshold: float
    positive: bool
    confidence: str
    model_name: str
    model_version: str | None
    created_at: datetime
    study_id: int
    accession: str | None
    patient_mrn: str
    verdicts: Sequence[Verdict] = ()  # oldest first
    mrn_system: str = MRN_SYSTEM


def result_status(verdicts: Sequence[Verdict]) -> str:
    """``preliminary`` without a verdict, ``final`` after one, ``amended`` once a later verdict changed the label."""
    if not verdicts:
        return "preliminary"
    return "amended" if any(v.true_label != verdicts[0].true_label for v in verdicts[1:]) else "final"


def checked(status: str, allowed: frozenset[str], what: str) -> str:
    """``status`` when its value set holds it.

    Raises:
        RequestError: a status outside the value set (fhir.resources would accept it).
    """
    if status not in allowed:
        raise RequestError(f"{what}: status {status!r} is not one of {', '.join(sorted(allowed))}")
    return status


def device_id(model_name: str, model_version: str | None) -> str:
    """The Device resource id of a model version (FHIR ids: letters, digits, '-' and '.', at most 64)."""
    return _ID.sub("-", f"{model_name}-{model_version or 'unversioned'}")[:64]


def device(model_name: str, model_version: str | None) -> dict[str, Any]:
    """The AI model version as a FHIR Device (validated)."""
    from fhir.resources.R4B.device import Device

    return _dump(
        Device.model_validate(
            {
                "resourceType": "Device",
                "id": device_id(model_name, model_version),
                "status": "active",
                "manufacturer": "Care Companion",
                "deviceName": [{"name": model_name, "type": "model-name"}],
                "type": {"text": "AI software: image classifier (decision support; not a diagnosis)"},
                "version": [{"value": model_version or "unversioned"}],
                "note": [{"text": REVIEW_WARNING}],
            }
        )
    )


def observation(result: AiResult) -> dict[str, Any]:
    """The AI's finding as a FHIR Observation (validated): the decided class (coded where the task has a code),
    each class's calibrated probability and the operating point as components, positive or negative."""
    from fhir.resources.R4B.observation import Observation

    status = checked(result_status(result.verdicts), OBSERVATION_STATUSES, f"observation {result.prediction_id}")
    components = [
        {"code": {"text": f"calibrated probability of {name}"}, "valueQuantity": _probability(p)}
        for name, p in result.probabilities.items()
    ]
    components.append({"code": {"text": "operating-point threshold"}, "valueQuantity": _probability(result.threshold)})
    resource = {
        "resourceType": "Observation",
        "id": str(result.prediction_id),
        "status": status,
        "category": [_radiology()],
        "code": {"text": f"AI finding: {result.task.title}"},
        "subject": _patient(result),
        "effectiveDateTime": _instant(result.created_at),
        "issued": _instant(result.created_at),
        "valueCodeableConcept": _concept(result.task, result.label),
        "interpretation": [
            {
                "coding": [
                    {
                        "system": INTERPRETATION,
                        "code": "POS" if result.positive else "NEG",
                        "display": "Positive" if result.positive else "Negative",
                    }
                ]
            }
        ],
        "method": {"text": f"AI decision support, confidence {result.confidence}; not a diagnosis"},
        "device": {"reference": f"Device/{device_id(result.model_name, result.model_version)}"},
        "component": components,
        "note": [{"text": REVIEW_WARNING}],
    }
    return _dump(Observation.model_validate(resource))


def diagnostic_report(result: AiResult) -> dict[str, Any]:
    """The result as a FHIR DiagnosticReport (validated), ``preliminary`` (the AI's answer, with the review
    warning) until a radiologist's verdict makes it ``final`` (their label as the conclusion)."""
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    status = checked(result_status(result.verdicts), REPORT_STATUSES, f"report {result.prediction_id}")
    if result.verdicts:
        last = result.verdicts[-1]
        reading = "confirms" if last.agrees else f"corrects the AI's {result.label!r}"
        conclusion = f"Radiologist's reading: {last.true_label} ({reading})." + (
            f" {last.comment}" if last.comment else ""
        )
        code = _concept(result.task, last.true_label)
    else:
        p = result.probabilities.get(result.label)
        shown = f", calibrated probability {p:.2f}" if p is not None else ""
        conclusion = f"AI finding, not a diagnosis: {result.label}{shown}. {REVIEW_WARNING}"
        code = _concept(result.task, result.label)
    identifier = [{"system": "urn:care-companion:prediction", "value": str(result.prediction_id)}]
    if result.accession:
        identifier.append({"system": "urn:care-companion:accession", "value": result.accession})
    resource = {
        "resourceType": "DiagnosticReport",
        "id": str(result.prediction_id),
        "identifier": identifier,
        "status": status,
        "category": [_radiology()],
        "code": {
            "coding": [{"system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}],
            "text": f"{result.task.title}: AI-assisted reading",
        },
        "subject": _patient(result),
        "effectiveDateTime": _instant(result.created_at),
        "issued": _instant(result.verdicts[-1].at if result.verdicts else result.created_at),
        "result": [{"reference": f"Observation/{result.prediction_id}"}],
        "conclusion": conclusion,
        "conclusionCode": [code],
    }
    return _dump(DiagnosticReport.model_validate(resource))


def _dump(resource: Any) -> dict[str, Any]:
    return dict(resource.model_dump(mode="json", exclude_none=True))


def _radiology() -> dict[str, Any]:
    return {
        "coding": [
            {"system": LOINC, "code": "LP29684-5", "display": "Radiology"},
            {"system": V2_0074, "code": "RAD", "display": "Radiology"},
        ]
    }


def _patient(result: AiResult) -> dict[str, Any]:
    return {"identifier": {"system": result.mrn_system, "value": result.patient_mrn}}


def _concept(task: TaskSpec, label: str) -> dict[str, Any]:
    code: ClinicalCode | None = task.codes.get(label)
    concept: dict[str, Any] = {"text": label}
    if code is not None:
        concept["coding"] = [{"system": code.system, "code": code.code, "display": code.display}]
    return concept


def _probability(p: float) -> dict[str, Any]:
    return {"value": round(float(p), 4), "unit": "probability", "system": UCUM, "code": "1"}


def _instant(at: datetime) -> str:
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).isoformat(timespec="seconds")


def ai_result(
    prediction: Prediction, study: Study, verdicts: Sequence[Feedback], *, mrn_system: str = MRN_SYSTEM
) -> AiResult:
    """The FHIR view of a stored prediction, its study (and patient) and the verdicts on it (oldest first)."""
    return AiResult(
        prediction_id=prediction.id,
        task=get_task(prediction.task),
        label=prediction.label,
        probabilities={name: float(p) for name, p in (prediction.probabilities or {}).items()},
        threshold=prediction.threshold,
        positive=prediction.positive,
        confidence=prediction.confidence,
        model_name=prediction.model_name,
        model_version=prediction.model_version,
        created_at=prediction.created_at,
        study_id=study.id,
        accession=study.accession,
        patient_mrn=study.patient.mrn,
        verdicts=[Verdict(f.true_label, f.agrees, f.created_at, f.comment) for f in verdicts],
        mrn_system=mrn_system,
    )
