"""Results to a FHIR server: each result goes as one validated transaction (Device, Observation, DiagnosticReport
PUT under the ids the service's FHIR routes use), once while it is unchanged, again after each verdict that
changes its status; a server that refuses a bundle or cannot be reached leaves the result for the next run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from care_companion.interop.fhir_push import push_results
from care_companion.records.repos import list_audit
from tests.helpers import clinic, dicom_bytes

USERS = (("tech", "technician", "er"), ("rad", "radiologist", "er"))


class StandInFhirServer:
    """A FHIR server stand-in (an httpx transport): takes transaction Bundles, keeps each resource by type and id,
    can be told to fail."""

    def __init__(self) -> None:
        self.resources: dict[str, dict[str, Any]] = {}
        self.bundles: list[dict[str, Any]] = []
        self.mode = "ok"  # "ok", "refuse" (HTTP 422) or "down" (no connection)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        from fhir.resources.R4B.bundle import Bundle

        if self.mode == "down":
            raise httpx.ConnectError("connection refused", request=request)
        assert request.headers["content-type"] == "application/fhir+json"
        assert request.headers.get("authorization") == "Bearer fhir-token"
        bundle = json.loads(request.content)
        Bundle.model_validate(bundle)  # a valid R4B Bundle
        if self.mode == "refuse":
            return httpx.Response(422, json={"resourceType": "OperationOutcome", "issue": []})
        assert bundle["type"] == "transaction"
        self.bundles.append(bundle)
        for entry in bundle["entry"]:
            assert entry["request"]["method"] == "PUT"
            self.resources[entry["request"]["url"]] = entry["resource"]
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "transaction-response"})


def test_results_go_to_the_fhir_server_once_and_again_after_each_verdict(tmp_path: Path) -> None:
    server = StandInFhirServer()
    fhir = httpx.Client(
        base_url="http://fhir.test/fhir",
        transport=httpx.MockTransport(server),
        headers={"Authorization": "Bearer fhir-token"},
    )
    with clinic(tmp_path, USERS) as (client, tokens):
        app: Any = client.app
        tech = {"Authorization": f"Bearer {tokens['tech']}"}
        patient = client.post("/v1/patients/match", json={"mrn": "F-1", "name": "Jane Doe"}, headers=tech).json()
        film = dicom_bytes(np.full((96, 96), 100, np.uint8), bits_stored=8)
        answer = client.post(
            "/v1/predict/chest", files={"file": ("a.dcm", film)}, data={"patient_id": patient["id"]}, headers=tech
        ).json()
        client.post("/v1/predict/chest", files={"file": ("b.dcm", film)}, headers=tech)  # anonymous: not sent
        prediction = str(answer["prediction_id"])

        def push() -> Any:
            return push_results(app.state.sessions, fhir, mrn_system="urn:test:mrn")

        assert push().pushed == [answer["prediction_id"]]
        report = server.resources[f"DiagnosticReport/{prediction}"]
        assert report["status"] == "preliminary" and report["result"] == [{"reference": f"Observation/{prediction}"}]
        assert server.resources[f"Observation/{prediction}"]["subject"]["identifier"] == {
            "system": "urn:test:mrn",
            "value": "F-1",
        }
        device_ref = server.resources[f"Observation/{prediction}"]["device"]["reference"]
        assert device_ref in server.resources  # the Device is in the same transaction
        assert push().pushed == []  # unchanged: not sent again

        def verdict(label: str) -> None:
            rad = {"Authorization": f"Bearer {tokens['rad']}"}
            posted = client.post(f"/v1/studies/{answer['study_id']}/feedback", json={"true_label": label}, headers=rad)
            assert posted.status_code == 201, posted.text

        verdict("normal")
        server.mode = "refuse"
        refused = push()
        assert refused.pushed == [] and refused.failed[0][0] == answer["prediction_id"]
        server.mode = "down"
        assert "not reached" in push().failed[0][1]
        server.mode = "ok"
        assert push().pushed == [answer["prediction_id"]]  # the verdict, sent once the server takes it
        assert server.resources[f"DiagnosticReport/{prediction}"]["status"] == "final"
        verdict("tuberculosis")
        assert push().pushed == [answer["prediction_id"]]
        assert server.resources[f"DiagnosticReport/{prediction}"]["status"] == "amended"
        assert len(server.bundles) == 3 and push().pushed == []
        with app.state.sessions() as session:
            rows, _ = list_audit(session=session, action="fhir.push")
        assert sorted(r.detail["status"] for r in rows) == ["amended", "final", "preliminary"]


def test_push_without_a_server_is_a_clear_error(cli_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from care_companion.cli.main import app

    result = CliRunner().invoke(app, ["fhir", "push"])
    assert result.exit_code == 2 and "CARE_FHIR_SERVER_URL" in result.output
