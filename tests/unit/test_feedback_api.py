"""Radiologists' feedback: who may give it, the labelled copy in the store (DICOM de-identified), the CSV ledger,
and nothing half-recorded when the store fails."""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pydicom
import pytest
from sqlalchemy import func, select

from care_companion.records.models import Feedback
from care_companion.records.repos import add_image, add_prediction, create_patient, create_study
from care_companion.records.schemas import PatientCreate, PredictionCreate, StudyCreate
from tests.helpers import dicom_bytes, seed_users, service_client, tokens_for

USERS = (("rad", "radiologist", "er"), ("tech", "technician", "er"), ("rad2", "radiologist", "icu"))
PNG = b"\x89PNG\r\n\x1a\n" + b"pretend-png-bytes"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A running service with users, one chest study (a PNG and a DICOM image) and a 'normal' prediction."""
    with service_client(tmp_path_factory.mktemp("feedback"), login=False) as client:
        app = client.app
        store = app.state.store  # type: ignore[attr-defined]
        dicom = dicom_bytes(np.full((80, 80), 900, np.uint16), bits_stored=12, PatientName="Doe^Jane")
        with app.state.sessions() as session, session.begin():  # type: ignore[attr-defined]
            seed_users(session, USERS)
            patient = create_patient(
                session=session, patient_in=PatientCreate(mrn="MRN-1", name="Jane Doe", department="er")
            )
            study = create_study(session=session, study_in=StudyCreate(patient_id=patient.id, task="chest"))
            for data, view, suffix in ((PNG, "frontal", ".png"), (dicom, "frontal-dicom", ".dcm")):
                sha = hashlib.sha256(data).hexdigest()
                key = f"uploads/{sha[:2]}/{sha}{suffix}"
                store.put_bytes(key, data)
                add_image(
                    session=session, study_id=study.id, object_key=key, sha256=sha, view=view,
                    content_type="application/octet-stream", size_bytes=len(data),
                )  # fmt: skip
            prediction = add_prediction(
                session=session,
                prediction_in=PredictionCreate(
                    study_id=study.id, request_id="r1", task="chest", model_name="chest", model_version="3",
                    probabilities={"normal": 0.9}, label="normal", threshold=0.2, positive=False,
                    confidence="high", latency_ms=12.0,
                ),
            )  # fmt: skip
            ids = {"study": study.id, "prediction": prediction.id}
        settings = app.state.settings  # type: ignore[attr-defined]
        tokens = tokens_for(settings, USERS)
        yield {
            "client": client,
            "store": store,
            "ids": ids,
            "tokens": tokens,
            "dicom_sha": hashlib.sha256(dicom).hexdigest(),
        }


def _auth(world: dict[str, Any], user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {world['tokens'][user]}"}


def _feedback_rows(world: dict[str, Any]) -> int:
    with world["client"].app.state.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Feedback)) or 0)


def test_only_radiologists_of_the_department_give_feedback(world: dict[str, Any]) -> None:
    client, study = world["client"], world["ids"]["study"]
    url = f"/v1/studies/{study}/feedback"
    assert client.post(url, json={"true_label": "pneumonia"}).status_code == 401
    assert client.post(url, json={"true_label": "pneumonia"}, headers=_auth(world, "tech")).status_code == 403
    assert client.post(url, json={"true_label": "pneumonia"}, headers=_auth(world, "rad2")).status_code == 404
    bad = client.post(url, json={"true_label": "fracture"}, headers=_auth(world, "rad"))
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_label"
    assert _feedback_rows(world) == 0
    assert not world["store"].list("feedback/")


def test_feedback_copies_the_image_under_its_true_label(world: dict[str, Any]) -> None:
    client, store = world["client"], world["store"]
    answer = client.post(
        f"/v1/studies/{world['ids']['study']}/feedback",
        json={"true_label": "Pneumonia", "comment": "right lower lobe consolidation"},
        headers=_auth(world, "rad"),
    )
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["true_label"] == "pneumonia" and body["predicted_label"] == "normal" and body["agrees"] is False
    assert body["prediction_id"] == world["ids"]["prediction"]
    png_key = f"feedback/chest/PNEUMONIA/{hashlib.sha256(PNG).hexdigest()}.png"
    assert store.get_bytes(png_key) == PNG
    copied = pydicom.dcmread(io.BytesIO(store.get_bytes(f"feedback/chest/PNEUMONIA/{world['dicom_sha']}.dcm")))
    assert str(copied.PatientName) == "" and copied.PatientIdentityRemoved == "YES"

    ledger = client.get("/v1/feedback/export.csv", headers=_auth(world, "tech"))
    assert ledger.status_code == 200 and ledger.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(ledger.text)))
    assert len(rows) == 1
    row = rows[0]
    assert (row["predicted_label"], row["true_label"], row["agrees"], row["radiologist"]) == (
        "normal", "pneumonia", "false", "rad",
    )  # fmt: skip
    assert row["model_version"] == "3" and row["object_key"].startswith("feedback/chest/PNEUMONIA/")
    assert "Jane" not in ledger.text and "MRN-1" not in ledger.text
    other = client.get("/v1/feedback/export.csv", headers=_auth(world, "rad2"))
    assert other.status_code == 200 and len(list(csv.DictReader(io.StringIO(other.text)))) == 0


def test_a_store_failure_records_nothing(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    before = _feedback_rows(world)

    def broken(key: str, data: bytes) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(world["store"], "put_bytes", broken)
    answer = world["client"].post(
        f"/v1/studies/{world['ids']['study']}/feedback",
        json={"true_label": "tuberculosis"},
        headers=_auth(world, "rad"),
    )
    assert answer.status_code == 503 and answer.json()["error"] == "store_unavailable"
    assert _feedback_rows(world) == before
    assert not world["store"].list("feedback/chest/TUBERCULOSIS/")
