"""The radiologists' worklist, without HTTP: triage order (flagged, then low-confidence, then the rest, each
longest-waiting first), awaiting versus reviewed (a verdict on the latest answer), department scoping, filters,
pages and the audit row; and the same list through ``GET /v1/worklist``."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from care_companion.access.worklist import worklist
from care_companion.errors import ConfigError, DataError
from care_companion.records import repos
from care_companion.records.models import AuditLog, Prediction, User, utcnow
from care_companion.records.schemas import FeedbackCreate, PatientCreate, PredictionCreate, StudyCreate, UserCreate
from tests.helpers import sqlite_session

NAME = "Zelda Quokkafeather"


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    with sqlite_session(tmp_path) as session:
        yield session


def user(session: Session, name: str, role: str, department: str) -> User:
    user_in = UserCreate(username=name, full_name=name, role=role, department=department)
    return repos.create_user(session=session, user_in=user_in, password_hash=None)


def study(session: Session, task: str = "chest", department: str = "er") -> int:
    patient = repos.create_patient(
        session=session,
        patient_in=PatientCreate(mrn=f"M{utcnow().timestamp()}-{task}-{department}", name=NAME, department=department),
    )
    return repos.create_study(session=session, study_in=StudyCreate(patient_id=patient.id, task=task)).id


def answer(session: Session, study_id: int, label: str, *, positive: bool, low: bool = False, hours: float) -> int:
    """An AI answer given ``hours`` ago."""
    task = "wrist" if label in ("fracture",) else "chest"
    prediction = repos.add_prediction(
        session=session,
        prediction_in=PredictionCreate(
            study_id=study_id,
            request_id="r",
            task=task,
            model_name=task,
            probabilities={label: 0.9},
            label=label,
            threshold=0.3,
            positive=positive,
            confidence="low" if low else "high",
            latency_ms=5.0,
        ),
    )
    prediction.created_at = utcnow() - timedelta(hours=hours)
    return prediction.id


@pytest.fixture
def ward(session: Session) -> dict[str, int]:
    """Studies of the er department (and one of icu) with answers of every priority."""
    rad = user(session, "rad", "radiologist", "er")
    ids = {name: study(session) for name in ("routine", "flagged", "low", "reviewed", "reread", "unread")}
    ids["fracture"] = study(session, "wrist")
    ids["icu"] = study(session, department="icu")
    answer(session, ids["routine"], "normal", positive=False, hours=10)
    answer(session, ids["flagged"], "pneumonia", positive=True, hours=1)
    answer(session, ids["fracture"], "fracture", positive=True, hours=3)
    answer(session, ids["low"], "normal", positive=False, low=True, hours=2)
    answer(session, ids["reviewed"], "pneumonia", positive=True, hours=5)
    answer(session, ids["reread"], "normal", positive=False, hours=8)
    answer(session, ids["icu"], "tuberculosis", positive=True, hours=9)
    for name in ("reviewed", "reread"):
        repos.add_feedback(
            session=session, study_id=ids[name], radiologist_id=rad.id, feedback_in=FeedbackCreate(true_label="normal")
        )
    answer(session, ids["reread"], "normal", positive=False, hours=0.5)  # uploaded again after the verdict
    session.flush()
    return ids


def test_awaiting_studies_come_flagged_first_then_low_confidence_each_longest_waiting_first(
    session: Session, ward: dict[str, int]
) -> None:
    rad = session.scalar(select(User).where(User.username == "rad"))
    assert rad is not None
    items, count = worklist(session=session, user=rad)
    order = [next(k for k, v in ward.items() if v == item.study_id) for item in items]
    assert order == ["fracture", "flagged", "low", "routine", "reread"] and count == 5
    assert [item.priority for item in items] == ["flagged", "flagged", "low_confidence", "routine", "routine"]
    first = items[0]
    assert first.task == "wrist" and first.label == "fracture" and first.patient_name == NAME
    assert first.reviewed_at is None and first.reviewed_by is None
    assert "unread" not in order and "icu" not in order  # no AI answer yet; another department


def test_reviewed_studies_filters_pages_and_the_audit_row(session: Session, ward: dict[str, int]) -> None:
    rad = session.scalar(select(User).where(User.username == "rad"))
    assert rad is not None
    reviewed, count = worklist(session=session, user=rad, status="reviewed")
    assert [i.study_id for i in reviewed] == [ward["reviewed"]] and count == 1  # "reread" has a newer answer
    assert reviewed[0].reviewed_by == "rad" and reviewed[0].true_label == "normal" and reviewed[0].agrees is False
    wrist, _ = worklist(session=session, user=rad, task="wrist")
    assert [i.study_id for i in wrist] == [ward["fracture"]]
    page, count = worklist(session=session, user=rad, offset=1, limit=2)
    assert [i.study_id for i in page] == [ward["flagged"], ward["low"]] and count == 5
    row = session.scalars(select(AuditLog).where(AuditLog.action == "worklist.read")).all()[-1]
    assert NAME not in str(row.detail) and row.detail["studies"] == [ward["flagged"], ward["low"]]
    with pytest.raises(ConfigError):
        worklist(session=session, user=rad, task="knee")
    with pytest.raises(DataError):
        worklist(session=session, user=rad, status="done")


def test_an_admin_sees_every_department(session: Session, ward: dict[str, int]) -> None:
    admin = user(session, "boss", "admin", "")
    items, count = worklist(session=session, user=admin)
    assert count == 6 and items[0].study_id == ward["icu"]  # flagged and waiting longest of all


def test_the_worklist_through_the_api(tmp_path: Path) -> None:
    from tests.helpers import seed_users, service_client, tokens_for

    with service_client(tmp_path, login=False) as client:
        app = client.app
        with app.state.sessions() as db, db.begin():  # type: ignore[attr-defined]
            seed_users(db, (("rad", "radiologist", "er"), ("far", "radiologist", "icu")))
            flagged = study(db)
            answer(db, flagged, "pneumonia", positive=True, hours=1)
            db.scalar(select(Prediction))  # flush
        tokens = tokens_for(app.state.settings, (("rad", "radiologist", "er"), ("far", "radiologist", "icu")))  # type: ignore[attr-defined]

        def get(who: str, query: str = "") -> dict:
            response = client.get(f"/v1/worklist{query}", headers={"Authorization": f"Bearer {tokens[who]}"})
            assert response.status_code == 200, response.text
            return dict(response.json())

        mine = get("rad")
        assert (
            mine["count"] == 1 and mine["data"][0]["study_id"] == flagged and mine["data"][0]["priority"] == "flagged"
        )
        assert get("far")["count"] == 0  # another department's radiologist
        assert get("rad", "?status=reviewed")["count"] == 0
        bad = client.get("/v1/worklist?status=done", headers={"Authorization": f"Bearer {tokens['rad']}"})
        assert bad.status_code == 422
        assert client.get("/v1/worklist").status_code == 401
