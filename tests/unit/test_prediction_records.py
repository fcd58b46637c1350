"""Predictions are kept: with a study, image + prediction + audit in one transaction; without, anonymously;
and when the store or the database fails the client gets 503 and nothing half-written remains."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from care_companion.records.models import AuditLog, Prediction
from care_companion.records.models import Image as ImageRow
from care_companion.records.repos import create_patient, create_study
from care_companion.records.schemas import PatientCreate, StudyCreate
from care_companion.serving import persistence
from tests.helpers import seed_users, service_client, tokens_for

USERS = (("tech", "technician", "er"), ("far", "technician", "icu"), ("rad", "radiologist", "er"))


def _png(seed: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray((np.random.default_rng(seed).random((96, 96)) * 255).astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with service_client(tmp_path_factory.mktemp("keep"), login=False) as client:
        app: Any = client.app
        with app.state.sessions() as session, session.begin():
            seed_users(session, USERS)
            patient = create_patient(
                session=session, patient_in=PatientCreate(mrn="M1", name="Jo Doe", department="er")
            )
            chest = create_study(session=session, study_in=StudyCreate(patient_id=patient.id, task="chest"))
            wrist = create_study(session=session, study_in=StudyCreate(patient_id=patient.id, task="wrist"))
            studies = {"chest": chest.id, "wrist": wrist.id}
        tokens = tokens_for(app.state.settings, USERS)
        yield {"client": client, "app": app, "studies": studies, "tokens": tokens}


def _post(world: dict[str, Any], data: bytes, *, user: str | None = "tech", study: int | None = None) -> Any:
    headers = {"Authorization": f"Bearer {world['tokens'][user]}"} if user else {}
    form = {"study_id": str(study)} if study is not None else {}
    return world["client"].post(
        "/v1/predict/chest", files={"file": ("film.png", data, "image/png")}, data=form, headers=headers
    )


def _count(world: dict[str, Any], model: type) -> int:
    with world["app"].state.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_predictions_without_a_study_are_logged_without_an_image(world: dict[str, Any]) -> None:
    images = _count(world, ImageRow)
    answer = _post(world, _png(1))
    assert answer.status_code == 200
    body = answer.json()
    assert body["prediction_id"] is not None and body["study_id"] is None and body["image_id"] is None
    with world["app"].state.sessions() as session:
        row = session.get(Prediction, body["prediction_id"])
        assert row is not None and row.study_id is None and row.label == body["label"]
        assert row.request_id == body["request_id"]
    assert _count(world, ImageRow) == images
    rows = _count(world, Prediction)
    nobody = _post(world, _png(1), user=None)
    assert nobody.status_code == 401 and nobody.json()["error"] == "unauthorized", nobody.text
    assert _post(world, b"junk", user=None).status_code == 401  # the login is checked before the upload
    assert _count(world, Prediction) == rows
    bad = world["client"].post(
        "/v1/predict/chest", files={"file": ("f.png", _png(1), "image/png")}, headers={"Authorization": "Bearer nope"}
    )
    assert bad.status_code == 401


def test_a_study_prediction_keeps_image_prediction_and_audit(world: dict[str, Any]) -> None:
    study = world["studies"]["chest"]
    assert _post(world, _png(2), user=None, study=study).status_code == 401
    assert _post(world, _png(2), user="far", study=study).status_code == 404  # another department's study
    wrong = _post(world, _png(2), user="tech", study=world["studies"]["wrist"])
    assert wrong.status_code == 422 and wrong.json()["error"] == "wrong_task"
    assert _post(world, b"not an image", user="tech", study=study).status_code == 400

    answer = _post(world, _png(2), user="tech", study=study)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["study_id"] == study and body["image_id"] and body["prediction_id"]
    with world["app"].state.sessions() as session:
        image = session.get(ImageRow, body["image_id"])
        assert image is not None and image.study_id == study and image.view == "frontal"
        assert world["app"].state.store.get_bytes(image.object_key) == _png(2)
        audit = session.scalars(select(AuditLog).where(AuditLog.action == "prediction.create")).all()
        assert any(a.detail.get("prediction_id") == body["prediction_id"] and a.username == "tech" for a in audit)
    again = _post(world, _png(2), user="tech", study=study).json()
    assert again["image_id"] == body["image_id"] and again["prediction_id"] != body["prediction_id"]
    listed = (
        world["client"]
        .get(f"/v1/studies/{study}/predictions", headers={"Authorization": f"Bearer {world['tokens']['rad']}"})
        .json()
    )
    assert {p["id"] for p in listed["data"]} >= {body["prediction_id"], again["prediction_id"]}


def test_store_failure_is_503_and_writes_nothing(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    before = (_count(world, Prediction), _count(world, ImageRow))

    def broken(key: str, data: bytes) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(world["app"].state.store, "put_bytes", broken)
    answer = _post(world, _png(3), user="tech", study=world["studies"]["chest"])
    assert answer.status_code == 503 and answer.json()["error"] == "store_unavailable"
    assert (_count(world, Prediction), _count(world, ImageRow)) == before


def test_database_failure_is_503_and_leaves_no_orphan_object(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = (_count(world, Prediction), _count(world, ImageRow))
    store = world["app"].state.store
    objects = set(store.list("images/"))

    def down(**kwargs: Any) -> None:
        raise OperationalError("INSERT", {}, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr(persistence, "add_prediction", down)
    answer = _post(world, _png(4), user="tech", study=world["studies"]["chest"])
    assert answer.status_code == 503 and answer.json()["error"] == "database_unavailable"
    assert (_count(world, Prediction), _count(world, ImageRow)) == before
    assert set(store.list("images/")) == objects  # the image written for this request was removed again
    anonymous = _post(world, _png(5))  # no study: the answer is still served, only its log entry is lost
    assert anonymous.status_code == 200 and anonymous.json()["prediction_id"] is None


def test_a_patient_id_opens_a_study_with_the_result_and_only_then(world: dict[str, Any]) -> None:
    """``patient_id`` instead of ``study_id``: the study is created in the result's transaction, so a refused
    upload, an unusable file or a failing store leaves no empty study; the patient's department rules apply."""
    from care_companion.records.models import Study

    with world["app"].state.sessions() as session:
        patient = session.scalars(select(Study.patient_id).where(Study.id == world["studies"]["chest"])).one()

    def send(data: bytes, user: str = "tech", **form: str) -> Any:
        headers = {"Authorization": f"Bearer {world['tokens'][user]}"}
        files = {"file": ("film.png", data, "image/png")}
        return world["client"].post("/v1/predict/chest", files=files, data=form, headers=headers)

    studies = _count(world, Study)
    assert send(b"not an image", patient_id=str(patient)).status_code == 400
    assert send(_png(7), user="far", patient_id=str(patient)).status_code == 404  # another department's patient
    both = send(_png(7), patient_id=str(patient), study_id=str(world["studies"]["chest"]))
    assert both.status_code == 422 and "not both" in both.json()["detail"]
    assert _count(world, Study) == studies  # nothing opened
    answer = send(_png(8), patient_id=str(patient))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert _count(world, Study) == studies + 1 and body["study_id"] not in world["studies"].values()
    with world["app"].state.sessions() as session:
        study = session.get(Study, body["study_id"])
        assert study is not None and study.patient_id == patient and study.task == "chest"
        image = session.get(ImageRow, body["image_id"])
        assert image is not None and image.study_id == study.id
        actions = set(session.scalars(select(AuditLog.action).where(AuditLog.request_id == body["request_id"])))
        assert {"study.create", "prediction.create"} <= actions
