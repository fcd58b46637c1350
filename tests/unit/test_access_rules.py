"""The rules behind the HTTP API, exercised without HTTP: credentials, the sign-in lockout, department scoping,
patients and studies, accounts (the self-lockout rule), the audit rows they write, model promotion's errors
and radiologists' verdicts.

Each test gets a fresh SQLite database (tables made from the models) and one session; nothing is committed
between the rule and the assertions, as in a request's transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from care_companion.access import accounts, patients
from care_companion.access.audit import audit, ids
from care_companion.access.credentials import (
    NOT_AUTHENTICATED,
    authenticate_credential,
    check_permission,
    user_for_api_key,
)
from care_companion.access.departments import check_assignable, check_department, visible_department
from care_companion.access.signin import (
    AUDIT_USERNAME_CHARS,
    INVALID_CREDENTIALS,
    TooManyAttempts,
    login_locked_for,
    sign_in,
)
from care_companion.config import Settings
from care_companion.errors import AuthError, ConfigError, Forbidden, ModelError, RequestError, ServiceUnavailable
from care_companion.feedback.verdicts import export_ledger, give_feedback
from care_companion.records import repos
from care_companion.records.models import AuditLog, User
from care_companion.records.repos import NotFound
from care_companion.records.schemas import (
    FeedbackCreate,
    PatientBase,
    PatientUpdate,
    StudyCreate,
    UserCreate,
    UserUpdate,
)
from care_companion.registry import promotion
from care_companion.security import Permission, create_access_token, hash_password, verify_password
from care_companion.storage.local import LocalStore
from tests.helpers import sqlite_session

PASSWORD = "correct horse battery staple"
SECRET = "s" * 40
NAME = "Zelda Quokkafeather"  # a patient's name: must never reach an audit row


@pytest.fixture(scope="module")
def password_hash() -> str:
    return hash_password(PASSWORD)


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    with sqlite_session(tmp_path) as session:
        yield session


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, jwt_secret=SECRET, login_max_failures=3, login_lockout_minutes=15)


def make_user(
    session: Session,
    username: str,
    role: str = "technician",
    department: str = "er",
    password_hash: str | None = None,
) -> User:
    user_in = UserCreate(username=username, full_name=username.title(), role=role, department=department)
    return repos.create_user(session=session, user_in=user_in, password_hash=password_hash)


def rows(session: Session, action: str | None = None) -> list[AuditLog]:
    stmt = select(AuditLog).order_by(AuditLog.id)
    if action is not None:
        stmt = stmt.where(AuditLog.action == action)
    return list(session.scalars(stmt))


def patient_in(mrn: str = "MRN-1", department: str = "") -> PatientBase:
    return PatientBase.model_construct(mrn=mrn, name=NAME, sex="F", medical_history="", department=department)


# -- departments ---------------------------------------------------------------------------------------------


def test_department_scoping_hides_other_departments_and_refuses_filing_there(session: Session) -> None:
    tech, admin = make_user(session, "tech"), make_user(session, "boss", role="admin", department="")
    assert visible_department(tech) == "er" and visible_department(admin) is None
    check_department(tech, "er")
    check_department(admin, "icu")
    with pytest.raises(NotFound, match=r"^patient 7 not found$"):
        check_department(tech, "icu", what="patient 7")
    check_assignable(admin, "icu")
    with pytest.raises(Forbidden, match="own department \\('er'\\)"):
        check_assignable(tech, "icu")


# -- patients and studies ------------------------------------------------------------------------------------


def test_a_new_patient_goes_to_the_callers_department_and_is_audited_without_its_name(session: Session) -> None:
    tech = make_user(session, "tech")
    patient = patients.add_patient(session=session, user=tech, patient_in=patient_in(), request_id="r-1")
    assert patient.department == "er"
    (row,) = rows(session, "patient.create")
    assert (row.username, row.resource_id, row.request_id) == ("tech", str(patient.id), "r-1")
    assert row.detail == {"department": "er"}
    assert NAME not in json.dumps([r.detail for r in rows(session)])


def test_non_admins_cannot_file_patients_elsewhere_and_a_departmentless_caller_must_name_one(session: Session) -> None:
    tech, admin = make_user(session, "tech"), make_user(session, "boss", role="admin", department="")
    with pytest.raises(Forbidden):
        patients.add_patient(session=session, user=tech, patient_in=patient_in(department="icu"))
    with pytest.raises(RequestError) as missing:
        patients.add_patient(session=session, user=admin, patient_in=patient_in(department="  "))
    assert missing.value.code == "department_required"
    assert rows(session) == [], "a refused create writes nothing"
    moved = patients.add_patient(session=session, user=admin, patient_in=patient_in(department="icu"))
    assert moved.department == "icu"


def test_another_departments_patient_reads_exactly_like_a_missing_one(session: Session) -> None:
    admin, tech2 = (
        make_user(session, "boss", role="admin", department=""),
        make_user(session, "tech2", department="icu"),
    )
    patient = patients.add_patient(session=session, user=admin, patient_in=patient_in(department="er"))
    with pytest.raises(NotFound) as hidden:
        patients.read_patient(session=session, user=tech2, patient_id=patient.id)
    with pytest.raises(NotFound) as missing:
        patients.read_patient(session=session, user=tech2, patient_id=patient.id + 100)
    assert hidden.value.detail == f"patient {patient.id} not found"
    assert missing.value.detail == f"patient {patient.id + 100} not found"
    assert rows(session, "patient.read") == []


def test_patient_updates_refuse_nulls_and_moves_but_an_admin_transfer_takes_the_studies(session: Session) -> None:
    tech, admin = make_user(session, "tech"), make_user(session, "boss", role="admin", department="")
    patient = patients.add_patient(session=session, user=tech, patient_in=patient_in())
    study = patients.add_study(session=session, user=tech, study_in=StudyCreate(patient_id=patient.id, task="chest"))
    with pytest.raises(RequestError, match="medical_history, name may not be null"):
        patients.change_patient(
            session=session,
            user=tech,
            patient_id=patient.id,
            patient_in=PatientUpdate.model_validate({"name": None, "medical_history": None}),
        )
    with pytest.raises(Forbidden):
        patients.change_patient(
            session=session, user=tech, patient_id=patient.id, patient_in=PatientUpdate(department="icu")
        )
    patients.change_patient(
        session=session, user=admin, patient_id=patient.id, patient_in=PatientUpdate(department="icu", name="Z Q")
    )
    session.refresh(study)
    assert study.department == "icu"
    (row,) = rows(session, "patient.update")
    assert row.detail == {"fields": ["department", "name"]}, "field names, never values"
    with pytest.raises(NotFound):
        patients.read_study(session=session, user=tech, study_id=study.id)


def test_listings_are_scoped_and_audited_with_ids_and_counts_only(session: Session) -> None:
    tech, tech2 = make_user(session, "tech"), make_user(session, "tech2", department="icu")
    admin = make_user(session, "boss", role="admin", department="")
    er = patients.add_patient(session=session, user=tech, patient_in=patient_in("ER-1"))
    icu = patients.add_patient(session=session, user=tech2, patient_in=patient_in("ICU-1"))
    found, count = patients.find_patients(session=session, user=tech, query="zelda")
    assert [p.id for p in found] == [er.id] and count == 1
    everyone, _ = patients.find_patients(session=session, user=admin, query="zelda")
    assert {p.id for p in everyone} == {er.id, icu.id}
    search = rows(session, "patient.search")[0]
    assert search.detail == {"query_given": True, "count": 1, "offset": 0, "ids": [er.id]}
    with pytest.raises(NotFound):
        patients.find_studies(session=session, user=tech, patient_id=icu.id)


def test_an_upload_needs_a_visible_study_of_the_same_task(session: Session) -> None:
    tech, tech2 = make_user(session, "tech"), make_user(session, "tech2", department="icu")
    patient = patients.add_patient(session=session, user=tech, patient_in=patient_in())
    study = patients.add_study(session=session, user=tech, study_in=StudyCreate(patient_id=patient.id, task="chest"))
    assert patients.study_for_upload(session, tech, study.id, "chest").id == study.id
    with pytest.raises(RequestError) as wrong:
        patients.study_for_upload(session, tech, study.id, "wrist")
    assert wrong.value.code == "wrong_task" and "is a chest study, not wrist" in wrong.value.detail
    with pytest.raises(NotFound, match=r"^study not found$"):
        patients.study_for_upload(session, tech2, study.id, "chest")


# -- accounts ------------------------------------------------------------------------------------------------


def test_an_admin_cannot_disable_or_demote_their_own_account(session: Session) -> None:
    admin, other = make_user(session, "boss", role="admin", department=""), make_user(session, "tech")
    for change in (UserUpdate(is_active=False), UserUpdate(role="radiologist")):
        with pytest.raises(RequestError) as refused:
            accounts.change_user(session=session, admin=admin, user_id=admin.id, user_in=change)
        assert refused.value.code == "self_lockout" and refused.value.status == 422
    assert admin.is_active and admin.role == "admin"
    accounts.check_keeps_admin(admin, admin.id, UserUpdate(role="admin", full_name="Still Boss"))
    disabled = accounts.change_user(session=session, admin=admin, user_id=other.id, user_in=UserUpdate(is_active=False))
    assert disabled.is_active is False
    (row,) = rows(session, "user.update")
    assert row.detail == {"fields": ["is_active"], "changes": {"is_active": False}}


def test_user_changes_keep_role_and_department_values_but_other_fields_by_name(session: Session) -> None:
    admin, other = make_user(session, "boss", role="admin", department=""), make_user(session, "tech")
    change = UserUpdate(full_name="Secret Name", role="radiologist", department="icu")
    accounts.change_user(session=session, admin=admin, user_id=other.id, user_in=change, request_id="r-9")
    (row,) = rows(session, "user.update")
    assert row.detail["fields"] == ["department", "full_name", "role"]
    assert row.detail["changes"] == {"role": "radiologist", "department": "icu"}
    assert "Secret Name" not in json.dumps(row.detail) and row.request_id == "r-9"


def test_a_new_user_gets_a_generated_password_once_and_only_its_hash_is_kept(session: Session) -> None:
    admin = make_user(session, "boss", role="admin", department="")
    new = accounts.add_user(
        session=session, admin=admin, user_in=UserCreate(username="new", full_name="New", role="technician")
    )
    assert new.password and len(new.password) >= 16
    assert new.user.password_hash != new.password and verify_password(new.user.password_hash, new.password)
    chosen = accounts.add_user(
        session=session,
        admin=admin,
        user_in=UserCreate(username="own", full_name="Own", role="radiologist", password=PASSWORD),
    )
    assert chosen.password is None and verify_password(chosen.user.password_hash, PASSWORD)
    created = rows(session, "user.create")
    assert [r.detail["generated_password"] for r in created] == [True, False]
    everything = json.dumps([r.detail for r in rows(session)])
    assert new.password not in everything and PASSWORD not in everything


def test_api_keys_work_until_revoked_and_belong_to_their_user_only(session: Session, settings: Settings) -> None:
    admin, scanner, other = (
        make_user(session, "boss", role="admin", department=""),
        make_user(session, "scanner"),
        make_user(session, "other"),
    )
    new = accounts.add_api_key(session=session, admin=admin, user_id=scanner.id, name="CT-1")
    assert authenticate_credential(session=session, credential=new.key, settings=settings).id == scanner.id
    with pytest.raises(NotFound, match=f"API key {new.api_key.id} not found"):
        accounts.revoke_user_api_key(session=session, admin=admin, user_id=other.id, key_id=new.api_key.id)
    first = accounts.revoke_user_api_key(session=session, admin=admin, user_id=scanner.id, key_id=new.api_key.id)
    revoked_at = first.revoked_at
    again = accounts.revoke_user_api_key(session=session, admin=admin, user_id=scanner.id, key_id=new.api_key.id)
    assert revoked_at is not None and again.revoked_at == revoked_at, "revoking twice keeps the first time"
    with pytest.raises(AuthError) as refused:
        user_for_api_key(session=session, key=new.key)
    assert refused.value.code == "invalid_api_key" and "revoked" in refused.value.detail
    assert [r.action for r in rows(session)] == ["api_key.create", "api_key.revoke", "api_key.revoke"]
    assert new.key not in json.dumps([r.detail for r in rows(session)])


# -- credentials and sign-in ---------------------------------------------------------------------------------


def test_credentials_name_an_active_user_and_permissions_follow_the_role(session: Session, settings: Settings) -> None:
    tech = make_user(session, "tech")
    with pytest.raises(AuthError) as none:
        authenticate_credential(session=session, credential=None, settings=settings)
    assert none.value.code == "unauthorized" and none.value.detail == NOT_AUTHENTICATED
    token = create_access_token(username="tech", role="admin", department="er", settings=settings)
    assert authenticate_credential(session=session, credential=token, settings=settings).role == "technician"
    tech.is_active = False
    with pytest.raises(AuthError) as disabled:
        authenticate_credential(session=session, credential=token, settings=settings)
    assert disabled.value.code == "invalid_token"
    assert check_permission(tech, Permission.PREDICT) is tech
    with pytest.raises(Forbidden, match="'technician' does not have the 'manage_users' permission"):
        check_permission(tech, Permission.MANAGE_USERS)


def test_sign_in_audits_success_and_failure_alike_for_unknown_users(
    session: Session, settings: Settings, password_hash: str
) -> None:
    make_user(session, "rad", role="radiologist", password_hash=password_hash)
    user = sign_in(session=session, username="rad", password=PASSWORD, settings=settings, request_id="r-1")
    assert user.username == "rad"
    for username, password in (("rad", "wrong password"), ("nobody", PASSWORD)):
        with pytest.raises(AuthError) as refused:
            sign_in(session=session, username=username, password=password, settings=settings)
        assert (refused.value.code, refused.value.detail) == ("invalid_credentials", INVALID_CREDENTIALS)
    login, *failed = rows(session)
    assert (login.action, login.username, login.resource_type, login.request_id) == ("auth.login", "rad", "user", "r-1")
    assert [(r.action, r.username, r.resource_id, r.detail) for r in failed] == [
        ("auth.failed", "anonymous", "rad", {"username": "rad"}),
        ("auth.failed", "anonymous", "nobody", {"username": "nobody"}),
    ]


def test_a_username_locks_after_too_many_failures_even_for_the_right_password(
    session: Session, settings: Settings, password_hash: str
) -> None:
    make_user(session, "rad", role="radiologist", password_hash=password_hash)
    for _ in range(settings.login_max_failures):
        assert login_locked_for(session, "rad", settings) == 0.0
        with pytest.raises(AuthError):
            sign_in(session=session, username="rad", password="wrong password", settings=settings)
    wait = login_locked_for(session, "rad", settings)
    assert 60 * settings.login_lockout_minutes - 5 < wait <= 60 * settings.login_lockout_minutes
    with pytest.raises(TooManyAttempts) as locked:
        sign_in(session=session, username="rad", password=PASSWORD, settings=settings)
    assert (locked.value.code, locked.value.status) == ("too_many_attempts", 429)
    assert locked.value.retry_after > 0 and "try again in 15 min" in locked.value.detail
    assert rows(session)[-1].action == "auth.locked"
    assert login_locked_for(session, "other", settings) == 0.0, "the lock is per username"


def test_failures_before_a_success_or_outside_the_window_do_not_count(
    session: Session, settings: Settings, password_hash: str
) -> None:
    make_user(session, "rad", role="radiologist", password_hash=password_hash)
    for _ in range(settings.login_max_failures):
        with pytest.raises(AuthError):
            sign_in(session=session, username="rad", password="wrong password", settings=settings)
    for row in rows(session, "auth.failed"):
        row.at -= timedelta(minutes=settings.login_lockout_minutes + 1)
    session.flush()
    assert login_locked_for(session, "rad", settings) == 0.0, "old failures have expired"
    for row in rows(session, "auth.failed"):
        row.at += timedelta(minutes=settings.login_lockout_minutes + 1) - timedelta(seconds=5)
    session.flush()
    assert login_locked_for(session, "rad", settings) > 0
    login = audit(session, None, "auth.login", "user", 1)
    login.username = "rad"
    session.flush()
    assert login_locked_for(session, "rad", settings) == 0.0, "a success since the failures clears them"


def test_a_long_username_is_audited_truncated(session: Session, settings: Settings) -> None:
    tried = "x" * (AUDIT_USERNAME_CHARS + 30)
    with pytest.raises(AuthError):
        sign_in(session=session, username=tried, password=PASSWORD, settings=settings)
    (row,) = rows(session)
    assert row.resource_id == tried[:AUDIT_USERNAME_CHARS] and row.detail == {"username": tried[:AUDIT_USERNAME_CHARS]}


def test_audit_rows_of_anonymous_callers_and_listing_ids(session: Session) -> None:
    tech = make_user(session, "tech")
    anonymous = audit(session, None, "auth.failed", "login", "x", request_id="r", count=0)
    assert (anonymous.user_id, anonymous.username, anonymous.detail) == (None, "anonymous", {"count": 0})
    assert audit(session, tech, "user.list", "user").user_id == tech.id
    assert ids(rows(session)) == [anonymous.id, anonymous.id + 1]


# -- model promotion -----------------------------------------------------------------------------------------


def test_a_task_the_service_does_not_serve_is_not_found() -> None:
    assert promotion.served_task("chest", ("chest", "wrist")) == "chest"
    with pytest.raises(NotFound, match="unknown task 'knee'; this service serves: chest, wrist"):
        promotion.served_task("knee", ("chest", "wrist"))


@pytest.mark.parametrize(
    ("raised", "expected", "code"),
    [
        (ModelError("no registered model 'wrist'"), NotFound, "not_found"),
        (ConfigError("invalid alias 'gold'"), RequestError, "invalid_request"),
        (ConnectionError("registry host unreachable"), ServiceUnavailable, "registry_unavailable"),
        (Forbidden("as is"), Forbidden, "forbidden"),
    ],
)
def test_registry_failures_become_clear_errors(raised: Exception, expected: type[Exception], code: str) -> None:
    with pytest.raises(expected) as caught, promotion.registry_errors():
        raise raised
    assert getattr(caught.value, "code", None) == code
    if isinstance(raised, ConnectionError):
        assert "ConnectionError" in str(caught.value)


def test_moving_an_alias_reports_the_version_it_pointed_at(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    aliases: dict[tuple[str, str], int] = {("chest", "production"): 1}
    monkeypatch.setattr(promotion, "alias_version", lambda task, alias, _s: aliases.get((task, alias)))

    def set_alias(task: str, version: int, alias: str, _s: Any) -> None:
        if alias not in ("staging", "canary", "production"):
            raise ConfigError(f"invalid alias {alias!r}")
        aliases[(task, alias)] = version

    monkeypatch.setattr(promotion, "set_alias", set_alias)
    assert promotion.move_alias("chest", 2, "production", settings) == 1
    assert promotion.move_alias("chest", 2, "canary", settings) is None
    assert aliases == {("chest", "production"): 2, ("chest", "canary"): 2}
    with pytest.raises(RequestError, match="invalid alias 'gold'"):
        promotion.move_alias("chest", 2, "gold", settings)


# -- radiologists' verdicts ----------------------------------------------------------------------------------


def test_verdicts_need_a_study_of_the_radiologists_department_and_are_audited(session: Session, tmp_path: Path) -> None:
    rad, rad2 = make_user(session, "rad", role="radiologist"), make_user(session, "rad2", "radiologist", "icu")
    patient = patients.add_patient(session=session, user=rad, patient_in=patient_in())
    study = patients.add_study(session=session, user=rad, study_in=StudyCreate(patient_id=patient.id, task="chest"))
    store, verdict = LocalStore(tmp_path / "store"), FeedbackCreate(true_label="Pneumonia", comment="clear")
    with pytest.raises(NotFound, match=r"^study not found$"):
        give_feedback(session=session, store=store, user=rad2, study_id=study.id, feedback_in=verdict, deid_salt="s")
    feedback = give_feedback(
        session=session, store=store, user=rad, study_id=study.id, feedback_in=verdict, deid_salt="s", request_id="r"
    )
    assert feedback.true_label == "pneumonia"
    (row,) = rows(session, "feedback.create")
    assert row.detail == {"feedback_id": feedback.id, "agrees": False} and row.request_id == "r"
    assert export_ledger(session=session, user=rad2).count("\n") == 1, "another department's ledger is empty"
    assert export_ledger(session=session, user=rad).count("\n") == 2
    assert [r.detail for r in rows(session, "feedback.export")] == [{"rows": 0}, {"rows": 1}]
