"""AI results as FHIR R4B resources: valid and round-tripping through ``fhir.resources``, coded where the task has
codes, ``preliminary`` until a radiologist's verdict, ``final`` after and ``amended`` when a later verdict changes
it; statuses outside their value set refused (``fhir.resources`` itself accepts them); over HTTP under the
study's department rules."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from PIL import Image

from care_companion import REVIEW_WARNING
from care_companion.errors import RequestError
from care_companion.interop.fhir import (
    FHIR_MEDIA_TYPE,
    REPORT_STATUSES,
    Verdict,
    checked,
    device,
    diagnostic_report,
    observation,
    result_status,
)
from care_companion.records.repos import create_patient
from care_companion.records.schemas import PatientCreate
from care_companion.tasks import SNOMED_CT, WRIST
from tests.helpers import ai_result as result
from tests.helpers import clinic

AT = datetime(2026, 12, 3, 9, 30, tzinfo=UTC)
USERS = (("tech", "technician", "er"), ("rad", "radiologist", "er"), ("far", "radiologist", "icu"))


def round_trips(resource: dict[str, Any], cls: Any) -> Any:
    parsed = cls.model_validate(resource)
    assert cls.model_validate_json(parsed.model_dump_json()).model_dump(mode="json", exclude_none=True) == resource
    return parsed


def test_a_result_without_a_verdict_is_a_preliminary_coded_report() -> None:
    report = round_trips(diagnostic_report(result()), DiagnosticReport)
    assert report.status == "preliminary"
    assert report.subject.identifier.value == "MRN-77"
    assert report.result[0].reference == "Observation/12"
    assert [(c.system, c.code) for c in report.conclusionCode[0].coding] == [(SNOMED_CT, "233604007")]
    assert REVIEW_WARNING in report.conclusion and "not a diagnosis" in report.conclusion
    assert {c.code for c in report.category[0].coding} == {"LP29684-5", "RAD"}

    found = round_trips(observation(result()), Observation)
    assert found.status == "preliminary" and found.valueCodeableConcept.coding[0].code == "233604007"
    assert found.interpretation[0].coding[0].code == "POS"
    probabilities = {c.code.text: float(c.valueQuantity.value) for c in found.component}
    assert probabilities["calibrated probability of pneumonia"] == pytest.approx(0.84)
    assert probabilities["operating-point threshold"] == pytest.approx(0.21)
    assert found.device.reference == "Device/chest-3"
    model = round_trips(device("chest", "3"), Device)
    assert model.id == "chest-3" and model.version[0].value == "3"


def test_a_verdict_makes_it_final_and_a_changed_verdict_amended() -> None:
    confirmed = Verdict("pneumonia", True, AT)
    corrected = Verdict("normal", False, AT, "old scar")
    assert result_status(()) == "preliminary"
    assert result_status((confirmed,)) == "final"
    assert result_status((confirmed, Verdict("pneumonia", True, AT))) == "final"
    assert result_status((confirmed, corrected)) == "amended"
    final = round_trips(diagnostic_report(result(corrected)), DiagnosticReport)
    assert final.status == "final"
    assert final.conclusion.startswith("Radiologist's reading: normal (corrects the AI's 'pneumonia')")
    assert "old scar" in final.conclusion and final.conclusionCode[0].coding[0].code == "17621005"
    assert round_trips(observation(result(confirmed, corrected)), Observation).status == "amended"


def test_a_class_without_a_code_is_sent_as_text() -> None:
    report = diagnostic_report(result(label="unknown"))
    assert report["conclusionCode"] == [{"text": "unknown"}]
    assert WRIST.codes["fracture"].code == "125605004"


def test_a_bogus_status_is_refused_although_fhir_resources_takes_it() -> None:
    assert DiagnosticReport.model_validate({"resourceType": "DiagnosticReport", "status": "bogus", "code": {}})
    with pytest.raises(RequestError, match="bogus"):
        checked("bogus", REPORT_STATUSES, "report 1")
    assert checked("amended", REPORT_STATUSES, "report 1") == "amended"


# -- over HTTP -----------------------------------------------------------------------------------------------


def png() -> bytes:
    out = io.BytesIO()
    Image.fromarray((np.random.default_rng(3).random((96, 96)) * 255).astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root: Path = tmp_path_factory.mktemp("fhir")
    with clinic(root, USERS) as (client, tokens):
        app: Any = client.app
        with app.state.sessions() as session, session.begin():
            patient = create_patient(session=session, patient_in=PatientCreate(mrn="F1", name="Al", department="er"))
            patient_id = patient.id
        yield {"client": client, "patient": patient_id, "tokens": tokens}


def call(world: dict[str, Any], method: str, path: str, user: str, **kwargs: Any) -> Any:
    headers = {"Authorization": f"Bearer {world['tokens'][user]}"}
    return world["client"].request(method, path, headers=headers, **kwargs)


def test_the_report_follows_the_radiologists_verdict_over_http(world: dict[str, Any]) -> None:
    answer = call(
        world,
        "POST",
        "/v1/predict/chest",
        "tech",
        files={"file": ("film.png", png(), "image/png")},
        data={"patient_id": str(world["patient"])},
    )
    assert answer.status_code == 200, answer.text
    prediction, study = answer.json()["prediction_id"], answer.json()["study_id"]
    response = call(world, "GET", f"/fhir/DiagnosticReport/{prediction}", "rad")
    assert response.status_code == 200 and response.headers["content-type"].startswith(FHIR_MEDIA_TYPE)
    report = DiagnosticReport.model_validate_json(response.text)
    assert report.status == "preliminary" and report.subject.identifier.value == "F1"
    assert call(world, "GET", f"/fhir/DiagnosticReport/{prediction}", "far").status_code == 404  # other department

    verdict = call(world, "POST", f"/v1/studies/{study}/feedback", "rad", json={"true_label": "normal"})
    assert verdict.status_code == 201, verdict.text
    report = DiagnosticReport.model_validate_json(
        call(world, "GET", f"/fhir/DiagnosticReport/{prediction}", "rad").text
    )
    assert report.status == "final" and report.conclusion.startswith("Radiologist's reading: normal")
    found = Observation.model_validate_json(call(world, "GET", f"/fhir/Observation/{prediction}", "rad").text)
    assert found.status == "final" and found.valueCodeableConcept.text == answer.json()["label"]
    device_response = call(world, "GET", f"/fhir/{found.device.reference}", "rad")
    assert device_response.status_code == 200 and Device.model_validate_json(device_response.text).status == "active"
    assert call(world, "GET", "/fhir/Device/no-such-model", "rad").status_code == 404
    assert call(world, "GET", "/fhir/Observation/999999", "rad").status_code == 404
