"""Sign-in, credentials, the role matrix, department scoping and the audit trail of the patients/studies API.

A small app with only the auth and records routers runs on SQLite. The users (one argon2 hash shared by all)
and a few records are seeded once per module into a template database, which each test copies, so every test
starts from the same state and none sees another's writes.

Assertions marked ``[mapping]`` need ``NotFound -> 404`` and ``Conflict -> 409`` in ``http_errors.status_of``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from care_companion.access.departments import check_department, visible_department
from care_companion.config import Settings
from care_companion.records import repos
from care_companion.records.db import make_engine, session_factory, upgrade
from care_companion.records.models import AuditLog, Patient, Study, User
from care_companion.records.schemas import (
    AuditPublic,
    FeedbackCreate,
    PatientCreate,
    PredictionCreate,
    StudyCreate,
    UserCreate,
)
from care_companion.security import create_access_token, hash_password, new_api_key
from care_companion.serving.auth import auth_router
from care_companion.serving.http_errors import install_error_handlers
from care_companion.serving.records_routes import records_router

PASSWORD = "correct horse battery staple"
SECRET = "x" * 40
# username: (role, department); "scanner" is a machine user (API key only), "gone" is disabled.
USERS = {
    "tech": ("technician", "er"),
    "tech2": ("technician", "icu"),
    "rad": ("radiologist", "er"),
    "admin": ("admin", ""),
    "scanner": ("technician", "er"),
    "gone": ("technician", "er"),
}
ER_NAME = "Zelda Quokkafeather"  # must never reach the audit log
ER_PATIENT, ICU_PATIENT, ER_STUDY = 1, 2, 1


@dataclass(frozen=True)
class Seed:
    path: Path
    api_key: str
    revoked_key: str


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Seed:
    """A migrated database with the users, two API keys and an ER patient's study (image, prediction, verdict)."""
    path = tmp_path_factory.mktemp("records") / "care.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    password_hash = hash_password(PASSWORD)
    api_key, revoked_key = new_api_key(), new_api_key()
    engine = make_engine(url)
    try:
        with session_factory(engine).begin() as session:
            users = {}
            for username, (role, department) in USERS.items():
                user_in = UserCreate(username=username, full_name=username.title(), role=role, department=department)
                machine = username == "scanner"
                users[username] = repos.create_user(
                    session=session, user_in=user_in, password_hash=None if machine else password_hash
                )
            users["gone"].is_active = False
            for key in (api_key, revoked_key):
                repos.create_api_key(
                    session=session, user_id=users["scanner"].id, name="ct", prefix=key.prefix, key_hash=key.key_hash
                )
            revoked = repos.get_api_key_by_prefix(session=session, prefix=revoked_key.prefix)
            assert revoked is not None
            repos.revoke_api_key(session=session, key_id=revoked.id)
            er = repos.create_patient(
                session=session, patient_in=PatientCreate(mrn="ER-0001", name=ER_NAME, department="er")
            )
            icu = repos.create_patient(
                session=session, patient_in=PatientCreate(mrn="ICU-0001", name="Ivo Icu", department="icu")
            )
            study = repos.create_study(session=session, study_in=StudyCreate(patient_id=er.id, task="chest"))
            assert (er.id, icu.id, study.id) == (ER_PATIENT, ICU_PATIENT, ER_STUDY)
            image = repos.add_image(
                session=session,
                study_id=study.id,
                object_key="images/ab.png",
                sha256="ab" * 32,
                view="pa",
                content_type="image/png",
                size_bytes=10,
            )
            repos.add_prediction(
                session=session,
                prediction_in=PredictionCreate(
                    study_id=study.id,
                    image_id=image.id,
                    request_id="r1",
                    task="chest",
                    model_name="chest",
                    probabilities={"normal": 0.2, "pneumonia": 0.8},
                    label="pneumonia",
                    threshold=0.5,
                    positive=True,
                    confidence="high",
                    latency_ms=3.0,
                ),
            )
            repos.add_feedback(
                session=session,
                study_id=study.id,
                radiologist_id=users["rad"].id,
                feedback_in=FeedbackCreate(true_label="pneumonia"),
            )
    finally:
        engine.dispose()  # checkpoints the WAL into care.db, so copying the one file copies everything
    return Seed(path=path, api_key=api_key.key, revoked_key=revoked_key.key)


class _RequestIdFromHeader:
    """Stands in for the app's request guard: puts X-Request-ID into ``scope["state"]``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            for name, value in scope.get("headers", []):
                if name == b"x-request-id":
                    scope.setdefault("state", {})["request_id"] = value.decode()
        await self.app(scope, receive, send)


@dataclass
class Api:
    client: TestClient
    settings: Settings
    sessions: sessionmaker[Session]
    seed: Seed

    def headers(self, who: str | None, **extra: str) -> dict[str, str]:
        """Authorization for a user (a fresh access token), "key" (the machine user's API key), or none."""
        headers = dict(extra)
        if who == "key":
            headers["Authorization"] = f"Bearer {self.seed.api_key}"
        elif who is not None:
            role, department = USERS[who]
            token = create_access_token(username=who, role=role, department=department, settings=self.settings)
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def call(self, who: str | None, method: str, path: str, json_body: Any = None, **kwargs: Any) -> Any:
        return self.client.request(method, path, headers=self.headers(who), json=json_body, **kwargs)

    def audit_rows(self) -> list[dict[str, Any]]:
        with self.sessions() as session:
            rows = session.scalars(select(AuditLog).order_by(AuditLog.id))
            return [AuditPublic.model_validate(row).model_dump(mode="json") for row in rows]

    def user_id(self, username: str) -> int:
        with self.sessions() as session:
            user = repos.get_user_by_username(session=session, username=username)
            assert user is not None
            return user.id


@pytest.fixture
def api(seed: Seed, tmp_path: Path) -> Iterator[Api]:
    shutil.copy(seed.path, tmp_path / "care.db")
    url = f"sqlite:///{tmp_path / 'care.db'}"
    settings = Settings(data_dir=tmp_path, database_url=url, jwt_secret=SECRET)
    engine = make_engine(url)
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(auth_router)
    app.include_router(records_router)
    app.add_middleware(_RequestIdFromHeader)
    app.state.settings = settings
    app.state.sessions = session_factory(engine)
    try:
        with TestClient(app) as client:
            yield Api(client=client, settings=settings, sessions=app.state.sessions, seed=seed)
    finally:
        engine.dispose()


def _login(api: Api, username: str, password: str) -> Any:
    return api.client.post("/v1/auth/token", data={"username": username, "password": password})


# -- signing in and credentials ------------------------------------------------------------------------------


def test_login_issues_a_token_that_me_accepts(api: Api) -> None:
    response = _login(api, "rad", PASSWORD)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer" and body["role"] == "radiologist"
    assert body["expires_in"] == api.settings.access_token_minutes * 60

    me = api.client.get("/v1/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200
    assert me.json()["username"] == "rad" and me.json()["department"] == "er"
    assert "password_hash" not in me.json()
    logins = [row for row in api.audit_rows() if row["action"] == "auth.login"]
    assert [(r["username"], r["resource_type"], r["resource_id"]) for r in logins] == [
        ("rad", "user", str(api.user_id("rad")))
    ]


def test_bad_password_unknown_user_machine_and_disabled_users_get_the_same_401(api: Api) -> None:
    attempts = [("rad", "wrong password"), ("nobody", PASSWORD), ("scanner", PASSWORD), ("gone", PASSWORD)]
    answers = [_login(api, username, password) for username, password in attempts]
    assert {r.status_code for r in answers} == {401}
    assert {r.json()["error"] for r in answers} == {"invalid_credentials"}
    assert len({r.json()["detail"] for r in answers}) == 1
    assert all(r.headers["www-authenticate"] == "Bearer" for r in answers)

    failed = [row for row in api.audit_rows() if row["action"] == "auth.failed"]  # committed despite the 401
    assert [row["detail"] for row in failed] == [{"username": u} for u, _ in attempts]
    assert [(row["resource_type"], row["resource_id"]) for row in failed] == [("login", u) for u, _ in attempts]
    assert {row["user_id"] for row in failed} == {None}
    assert not [row for row in api.audit_rows() if row["action"] == "auth.login"]


def test_repeated_failures_lock_the_username_until_the_window_passes(api: Api) -> None:
    limit = api.settings.login_max_failures
    for _ in range(limit - 1):
        assert _login(api, "rad", "wrong password").status_code == 401
    assert _login(api, "rad", PASSWORD).status_code == 200  # a success forgives earlier failures
    for _ in range(limit):
        assert _login(api, "rad", "wrong password").status_code == 401
    locked = _login(api, "rad", PASSWORD)  # the right password no longer helps
    assert locked.status_code == 429 and locked.json()["error"] == "too_many_attempts", locked.text
    retry = int(locked.headers["retry-after"])
    assert 0 < retry <= api.settings.login_lockout_minutes * 60
    assert _login(api, "tech", PASSWORD).status_code == 200  # other usernames are not affected
    assert [r["action"] for r in api.audit_rows()][-2] == "auth.locked"
    with api.sessions() as session, session.begin():  # the window passes: the failures age out
        for row in session.scalars(select(AuditLog).where(AuditLog.action == "auth.failed")):
            row.at = row.at - timedelta(minutes=api.settings.login_lockout_minutes + 1)
    assert _login(api, "rad", PASSWORD).status_code == 200


def test_invalid_bodies_are_422(api: Api) -> None:
    assert api.client.post("/v1/auth/token", data={"username": "rad"}).status_code == 422
    assert api.call("tech", "POST", "/v1/patients", {"mrn": "", "name": "X"}).status_code == 422


def test_missing_expired_forged_and_garbage_credentials_are_401(api: Api) -> None:
    role, department = USERS["tech"]
    expired = create_access_token(
        username="tech",
        role=role,
        department=department,
        settings=api.settings,
        now=datetime.now(UTC) - timedelta(minutes=api.settings.access_token_minutes + 5),
    )
    forged = create_access_token(
        username="tech",
        role="admin",
        department="er",
        settings=Settings(data_dir=api.settings.data_dir, jwt_secret="y" * 40),
    )
    unknown = create_access_token(username="ghost", role="admin", department="", settings=api.settings)
    disabled = create_access_token(username="gone", role="technician", department="er", settings=api.settings)
    cases = {
        None: "unauthorized",
        f"Bearer {expired}": "token_expired",
        f"Bearer {forged}": "invalid_token",
        "Bearer not-a-token": "invalid_token",
        f"Bearer {unknown}": "invalid_token",
        f"Bearer {disabled}": "invalid_token",
        "Basic dGVjaDpwdw==": "unauthorized",
    }
    for authorization, code in cases.items():
        headers = {"Authorization": authorization} if authorization else {}
        response = api.client.get("/v1/patients", headers=headers)
        assert response.status_code == 401, authorization
        assert response.json()["error"] == code, authorization
        assert response.headers["www-authenticate"] == "Bearer"
    missing = api.client.get("/v1/patients").json()["detail"]
    assert "/v1/auth/token" in missing and "API key" in missing


def test_api_key_signs_in_the_machine_user_and_revoked_or_wrong_keys_do_not(api: Api) -> None:
    me = api.call("key", "GET", "/v1/auth/me")
    assert me.status_code == 200 and me.json()["username"] == "scanner"
    good = api.seed.api_key
    wrong_secret = good[: good.rindex("_") + 1] + "x" * 32
    for key in (api.seed.revoked_key, wrong_secret, "cc_short_key", "cc_"):
        response = api.client.get("/v1/auth/me", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 401 and response.json()["error"] == "invalid_api_key", key


def test_database_unavailable_is_503(api: Api, tmp_path: Path) -> None:
    broken = create_engine(f"sqlite:///{tmp_path / 'no-such-folder' / 'care.db'}")
    api.client.app.state.sessions = session_factory(broken)  # type: ignore[attr-defined]
    try:
        response = api.call("tech", "GET", "/v1/auth/me")
    finally:
        broken.dispose()
    assert response.status_code == 503 and response.json()["error"] == "database_unavailable"
    assert response.headers["retry-after"] == "1"


# -- the role matrix -----------------------------------------------------------------------------------------

CALLERS = [None, "tech", "rad", "admin", "key"]
ENDPOINTS: list[tuple[str, str, Any, int, set[str]]] = [
    # method, path, JSON body, status for callers allowed, callers refused with 403
    ("POST", "/v1/patients", {"mrn": "NEW-1", "name": "New Person", "department": "er"}, 201, set()),
    ("GET", "/v1/patients", None, 200, set()),
    ("GET", f"/v1/patients/{ER_PATIENT}", None, 200, set()),
    ("PATCH", f"/v1/patients/{ER_PATIENT}", {"sex": "F"}, 200, set()),
    ("POST", "/v1/studies", {"patient_id": ER_PATIENT, "task": "wrist"}, 201, set()),
    ("GET", "/v1/studies", None, 200, set()),
    ("GET", f"/v1/studies/{ER_STUDY}", None, 200, set()),
    ("GET", f"/v1/studies/{ER_STUDY}/images", None, 200, set()),
    ("GET", f"/v1/studies/{ER_STUDY}/predictions", None, 200, set()),
    ("GET", f"/v1/studies/{ER_STUDY}/feedback", None, 200, set()),
    ("GET", "/v1/audit", None, 200, {"tech", "rad", "key"}),
    ("GET", "/v1/auth/me", None, 200, set()),
]


@pytest.mark.parametrize("caller", CALLERS, ids=lambda c: c or "anonymous")
@pytest.mark.parametrize(
    ("method", "path", "body", "allowed", "refused"), ENDPOINTS, ids=[f"{m} {p}" for m, p, *_ in ENDPOINTS]
)
def test_role_matrix(
    api: Api, caller: str | None, method: str, path: str, body: Any, allowed: int, refused: set[str]
) -> None:
    response = api.call(caller, method, path, body)
    if caller is None:
        assert response.status_code == 401 and response.json()["error"] == "unauthorized"
    elif caller in refused:
        assert response.status_code == 403 and response.json()["error"] == "forbidden"
        assert "read_audit" in response.json()["detail"]
    else:
        assert response.status_code == allowed, response.text


def test_every_patient_data_endpoint_writes_an_audit_row(api: Api) -> None:
    for method, path, body, _, _ in ENDPOINTS:
        before = len(api.audit_rows())
        assert api.call("tech", method, path, body).status_code < 400 or path == "/v1/audit"
        wrote = len(api.audit_rows()) - before
        assert wrote == (0 if path in ("/v1/audit", "/v1/auth/me") else 1), path


# -- departments ---------------------------------------------------------------------------------------------


def test_other_departments_records_answer_404_like_missing_ones(api: Api) -> None:
    for path in (
        f"/v1/patients/{ER_PATIENT}",
        f"/v1/studies/{ER_STUDY}",
        f"/v1/studies/{ER_STUDY}/images",
        f"/v1/studies/{ER_STUDY}/predictions",
        f"/v1/studies/{ER_STUDY}/feedback",
        f"/v1/studies?patient_id={ER_PATIENT}",
    ):
        hidden = api.call("tech2", "GET", path)
        assert hidden.status_code == 404 and hidden.json()["error"] == "not_found", path  # [mapping]
        assert api.call("admin", "GET", path).status_code == 200, path
    missing = api.call("tech2", "GET", "/v1/patients/999")
    hidden = api.call("tech2", "GET", f"/v1/patients/{ER_PATIENT}")
    assert missing.status_code == hidden.status_code == 404  # [mapping]
    assert missing.json()["detail"].replace("999", "N") == hidden.json()["detail"].replace(str(ER_PATIENT), "N")
    assert api.call("tech2", "PATCH", f"/v1/patients/{ER_PATIENT}", {"sex": "M"}).status_code == 404  # [mapping]
    study = api.call("tech2", "POST", "/v1/studies", {"patient_id": ER_PATIENT, "task": "chest"})
    assert study.status_code == 404  # [mapping]

    assert api.call("tech2", "GET", "/v1/patients").json()["count"] == 1  # icu's own patient only
    assert api.call("tech2", "GET", "/v1/studies").json()["count"] == 0
    assert api.call("tech", "GET", "/v1/patients").json()["count"] == 1
    assert api.call("admin", "GET", "/v1/patients").json()["count"] == 2
    assert api.call("admin", "GET", "/v1/studies").json()["count"] == 1


def test_new_patients_go_to_the_callers_department_and_no_other(api: Api) -> None:
    created = api.call("tech2", "POST", "/v1/patients", {"mrn": "ICU-0002", "name": "Una"})
    assert created.status_code == 201 and created.json()["department"] == "icu"
    elsewhere = api.call("tech2", "POST", "/v1/patients", {"mrn": "ER-0002", "name": "Una", "department": "er"})
    assert elsewhere.status_code == 403 and elsewhere.json()["error"] == "forbidden"
    moved = api.call("tech2", "PATCH", f"/v1/patients/{ICU_PATIENT}", {"department": "er"})
    assert moved.status_code == 403
    assert api.call("tech2", "GET", f"/v1/patients/{ICU_PATIENT}").json()["department"] == "icu"

    no_department = api.call("admin", "POST", "/v1/patients", {"mrn": "X-1", "name": "Xan"})
    assert no_department.status_code == 422 and no_department.json()["error"] == "department_required"
    anywhere = api.call("admin", "POST", "/v1/patients", {"mrn": "X-1", "name": "Xan", "department": "ward 7"})
    assert anywhere.status_code == 201 and anywhere.json()["department"] == "ward 7"
    assert api.call("admin", "PATCH", f"/v1/patients/{ICU_PATIENT}", {"department": "er"}).status_code == 200
    assert api.call("tech", "GET", f"/v1/patients/{ICU_PATIENT}").status_code == 200


def test_scoping_helpers() -> None:
    tech = User(username="t", role="technician", department="er")
    admin = User(username="a", role="admin", department="")
    assert visible_department(tech) == "er" and visible_department(admin) is None
    check_department(tech, "er")
    check_department(admin, "icu")
    with pytest.raises(repos.NotFound, match="patient 3 not found"):
        check_department(tech, "icu", what="patient 3")


def test_studies_take_the_patients_department_and_creator(api: Api) -> None:
    created = api.call("rad", "POST", "/v1/studies", {"patient_id": ER_PATIENT, "task": "wrist", "accession": "A1"})
    assert created.status_code == 201
    study = created.json()
    assert study["department"] == "er" and study["body_part"] == "wrist"
    assert study["created_by_id"] == api.user_id("rad")
    listed = api.call("tech", "GET", f"/v1/studies?patient_id={ER_PATIENT}&task=wrist").json()
    assert listed["count"] == 1 and listed["data"][0]["id"] == study["id"]
    assert api.call("tech", "GET", "/v1/studies?task=knee").status_code == 422
    images = api.call("tech", "GET", f"/v1/studies/{ER_STUDY}/images").json()
    assert [image["view"] for image in images] == ["pa"]
    predictions = api.call("tech", "GET", f"/v1/studies/{ER_STUDY}/predictions").json()
    assert predictions["count"] == 1 and predictions["data"][0]["label"] == "pneumonia"
    feedback = api.call("tech", "GET", f"/v1/studies/{ER_STUDY}/feedback").json()
    assert feedback["count"] == 1 and feedback["data"][0]["agrees"] is True


# -- search, pagination, conflicts ---------------------------------------------------------------------------


def test_search_and_pagination(api: Api) -> None:
    for i in range(1, 8):
        assert (
            api.call("tech", "POST", "/v1/patients", {"mrn": f"PG-{i:02d}", "name": f"Pat {i:02d}"}).status_code == 201
        )

    first = api.call("tech", "GET", "/v1/patients?q=PG-&limit=3").json()
    assert (first["count"], first["offset"], first["limit"]) == (7, 0, 3)
    assert [p["mrn"] for p in first["data"]] == ["PG-01", "PG-02", "PG-03"]  # by name
    last = api.call("tech", "GET", "/v1/patients?q=PG-&limit=3&offset=6").json()
    assert last["count"] == 7 and [p["mrn"] for p in last["data"]] == ["PG-07"]
    assert api.call("tech", "GET", "/v1/patients?q=pat 0").json()["count"] == 7  # name, case-insensitive
    assert api.call("tech", "GET", "/v1/patients?q=pg-0").json()["count"] == 7  # MRN prefix
    assert api.call("tech", "GET", "/v1/patients?q=G-0").json()["count"] == 0  # MRN matches from the start only
    assert api.call("tech", "GET", "/v1/patients?q=quokka").json()["count"] == 1
    assert api.call("tech2", "GET", "/v1/patients?q=PG-").json()["count"] == 0
    assert api.call("admin", "GET", "/v1/patients").json()["count"] == 9
    for bad in ("limit=0", "limit=501", "offset=-1"):
        assert api.call("tech", "GET", f"/v1/patients?{bad}").status_code == 422, bad


def test_duplicate_mrn_is_409_and_the_failed_request_leaves_no_trace(api: Api) -> None:
    duplicate = api.call("tech", "POST", "/v1/patients", {"mrn": "ER-0001", "name": "Someone Else"})
    assert duplicate.status_code == 409 and duplicate.json()["error"] == "conflict"  # [mapping]
    clash = api.call("admin", "PATCH", f"/v1/patients/{ER_PATIENT}", {"mrn": "ICU-0001", "sex": "F"})
    assert clash.status_code == 409  # [mapping]
    no_doctor = api.call(
        "tech", "POST", "/v1/studies", {"patient_id": ER_PATIENT, "task": "chest", "referring_doctor_id": 999}
    )
    assert no_doctor.status_code == 404  # [mapping]
    with api.sessions() as session:
        patient = session.get(Patient, ER_PATIENT)
        assert patient is not None and (patient.mrn, patient.sex) == ("ER-0001", "U")
        assert session.scalar(select(func.count()).select_from(Patient)) == 2
        assert session.scalar(select(func.count()).select_from(Study)) == 1
    assert api.audit_rows() == []  # the whole request rolled back, its audit row too


def test_missing_records_are_404(api: Api) -> None:
    for path in ("/v1/patients/999", "/v1/studies/999", "/v1/studies/999/images", "/v1/studies/999/feedback"):
        response = api.call("admin", "GET", path)
        assert response.status_code == 404 and response.json()["error"] == "not_found", path  # [mapping]
    assert (
        api.call("admin", "POST", "/v1/studies", {"patient_id": 999, "task": "chest"}).status_code == 404
    )  # [mapping]


def test_required_fields_cannot_be_nulled(api: Api) -> None:
    response = api.call("tech", "PATCH", f"/v1/patients/{ER_PATIENT}", {"name": None, "birth_date": None})
    assert response.status_code == 422 and "name" in response.json()["detail"]
    assert api.call("tech", "PATCH", f"/v1/patients/{ER_PATIENT}", {"birth_date": None}).status_code == 200


# -- the audit trail -----------------------------------------------------------------------------------------


def test_audit_rows_say_who_did_what_to_which_record_and_never_name_the_patient(api: Api) -> None:
    rid = {"X-Request-ID": "req-create-1"}
    created = api.client.post(
        "/v1/patients",
        headers=api.headers("tech", **rid),
        json={"mrn": "ER-0777", "name": "Quentin Marmalade", "medical_history": "asthma since 1999"},
    )
    assert created.status_code == 201
    new_id = created.json()["id"]
    assert api.call("tech", "GET", f"/v1/patients/{new_id}").status_code == 200
    assert api.call("rad", "PATCH", f"/v1/patients/{new_id}", {"name": "Quentin Marmalade-Jones"}).status_code == 200
    assert api.call("tech", "GET", "/v1/patients?q=Marmalade").json()["count"] == 1
    assert api.call("rad", "GET", f"/v1/patients/{ER_PATIENT}").status_code == 200
    study = api.call("rad", "POST", "/v1/studies", {"patient_id": new_id, "task": "chest"}).json()
    assert api.call("rad", "GET", f"/v1/studies/{study['id']}").status_code == 200

    page = api.call("admin", "GET", f"/v1/audit?resource_type=patient&resource_id={new_id}").json()
    assert page["count"] == 3
    assert [(r["action"], r["username"]) for r in reversed(page["data"])] == [
        ("patient.create", "tech"),
        ("patient.read", "tech"),
        ("patient.update", "rad"),
    ]
    create_row = page["data"][-1]
    assert create_row["user_id"] == api.user_id("tech") and create_row["request_id"] == "req-create-1"
    assert create_row["detail"] == {"department": "er"}
    assert page["data"][0]["detail"] == {"fields": ["name"]}

    rows = api.audit_rows()
    actions = [(r["action"], r["resource_type"], r["resource_id"]) for r in rows]
    assert ("patient.search", "patient", None) in actions
    assert ("patient.read", "patient", str(ER_PATIENT)) in actions
    assert ("study.create", "study", str(study["id"])) in actions
    assert ("study.read", "study", str(study["id"])) in actions
    search = next(r for r in rows if r["action"] == "patient.search")
    assert search["detail"]["ids"] == [new_id] and search["detail"]["query_given"] is True

    dumped = json.dumps(rows)
    for secret in ("Quentin", "Marmalade", ER_NAME, "Quokka", "ER-0777", "asthma"):
        assert secret not in dumped

    paged = api.call("admin", "GET", "/v1/audit?limit=2&offset=1").json()
    assert paged["count"] == len(rows) and len(paged["data"]) == 2
    by_action = api.call("admin", "GET", "/v1/audit?action=study.read").json()
    assert by_action["count"] == 1
