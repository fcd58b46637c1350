"""The records database against SQLite (a temporary file) and PostgreSQL (a fresh database on 127.0.0.1:5432).

Every test runs on both backends (a module-scoped fixture parametrised over them). Tests share one migrated
database per backend but each runs inside a transaction that is rolled back, so none sees another's rows.
Migration tests get their own empty databases.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, inspect, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from care_companion.errors import ConfigError, DataError
from care_companion.records import repos
from care_companion.records.db import (
    check_migrated,
    current_revision,
    downgrade,
    head_revision,
    make_engine,
    upgrade,
)
from care_companion.records.models import Base, Feedback, Image, Patient, Study, User
from care_companion.records.schemas import (
    FeedbackCreate,
    FeedbackPublic,
    Page,
    PatientCreate,
    PatientPublic,
    PatientUpdate,
    PredictionCreate,
    PredictionPublic,
    StudyCreate,
    UserCreate,
    UserPublic,
)

pytestmark = pytest.mark.integration

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


class Backend:
    """Hands out fresh, empty databases of one kind and removes them at the end."""

    def __init__(self, name: str, tmp: Path) -> None:
        self.name = name
        self.tmp = tmp
        self.created: list[str] = []
        self.admin: Engine | None = None
        if name == "postgresql":
            self.admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
            try:
                with self.admin.connect() as conn:
                    conn.execute(text("SELECT 1"))
            except OperationalError as exc:
                self.admin.dispose()
                pytest.skip(f"PostgreSQL is not reachable at 127.0.0.1:5432 ({type(exc.orig).__name__})")

    def new_url(self) -> str:
        """The URL of a new empty database."""
        name = f"care_test_records_{uuid.uuid4().hex[:12]}"
        if self.admin is None:
            return f"sqlite:///{self.tmp / 'nested' / f'{name}.db'}"
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        self.created.append(name)
        return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"

    def close(self) -> None:
        """Drop every database this backend created."""
        if self.admin is None:
            return
        with self.admin.connect() as conn:
            for name in self.created:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.admin.dispose()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    kind = Backend(request.param, tmp_path_factory.mktemp(f"records-{request.param}"))
    yield kind
    kind.close()


@pytest.fixture(scope="module")
def engine(backend: Backend) -> Iterator[Engine]:
    """One migrated database per backend."""
    url = backend.new_url()
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    """A session inside a transaction rolled back after the test (its own commits become savepoints)."""
    connection = engine.connect()
    outer = connection.begin()
    session = Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
    try:
        yield session
    finally:
        session.close()
        outer.rollback()
        connection.close()


def _patient(session: Session, mrn: str = "MRN-1", name: str = "Ada Lovelace", department: str = "radiology"):
    return repos.create_patient(
        session=session,
        patient_in=PatientCreate(mrn=mrn, name=name, department=department, birth_date=date(1815, 12, 10), sex="F"),
    )


def _user(session: Session, username: str = "rad1", role: str = "radiologist") -> User:
    return repos.create_user(
        session=session,
        user_in=UserCreate(username=username, full_name=username.title(), role=role, specialties=["chest", "msk"]),
        password_hash="$argon2id$fake",
    )


def _prediction(session: Session, study_id: int | None, label: str = "pneumonia", task: str = "chest", **kw):
    fields = {
        "study_id": study_id,
        "request_id": uuid.uuid4().hex,
        "task": task,
        "model_name": f"{task}-resnet",
        "model_version": "3",
        "probabilities": {"normal": 0.1, "pneumonia": 0.85, "tuberculosis": 0.05},
        "label": label,
        "threshold": 0.42,
        "positive": label != "normal",
        "confidence": "high",
        "latency_ms": 12.5,
    }
    fields.update(kw)
    return repos.add_prediction(session=session, prediction_in=PredictionCreate(**fields))


def _sqlite_safe_default_compare(context, inspected_column, metadata_column, inspected, metadata, rendered):
    """SQLite reflects an empty-string default as ``''`` and Alembic then reports it changed; compare by value."""
    if context.dialect.name == "sqlite" and inspected is not None and rendered is not None:
        norm = lambda value: value.strip("()").strip("'\"")  # noqa: E731
        return norm(inspected) != norm(rendered)
    return None  # let Alembic decide


def _schema_differences(engine: Engine) -> list:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": _sqlite_safe_default_compare}
        )
        return compare_metadata(context, Base.metadata)


# -- migrations ----------------------------------------------------------------------------------------------


def test_migrations_reach_head_and_equal_the_models(engine: Engine) -> None:
    assert current_revision(engine) == head_revision() == "0007"
    check_migrated(engine)
    assert _schema_differences(engine) == []
    tables = set(inspect(engine).get_table_names())
    assert set(Base.metadata.tables) | {"alembic_version"} == tables


def test_check_migrated_refuses_an_empty_database_then_passes(backend: Backend) -> None:
    url = backend.new_url()
    engine = make_engine(url)
    try:
        assert current_revision(engine) is None
        with pytest.raises(
            ConfigError, match=r"not migrated \(at empty, code needs 0007\): run `care-companion db upgrade`"
        ):
            check_migrated(engine)
        upgrade(url)
        check_migrated(engine)
    finally:
        engine.dispose()


def test_downgrade_to_base_and_upgrade_again(backend: Backend) -> None:
    url = backend.new_url()
    upgrade(url)
    downgrade(url, "base")
    engine = make_engine(url)
    try:
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        assert current_revision(engine) is None
        with pytest.raises(ConfigError, match="db upgrade"):
            check_migrated(engine)
        upgrade(url)
        assert current_revision(engine) == head_revision()
        assert _schema_differences(engine) == []
    finally:
        engine.dispose()


# -- patients ------------------------------------------------------------------------------------------------


def test_patient_create_get_update(session: Session) -> None:
    patient = _patient(session)
    assert patient.id is not None
    assert patient.medical_history == "" and patient.sex == "F"
    repos.update_patient(
        session=session, patient_id=patient.id, patient_in=PatientUpdate(medical_history="asthma", name="Ada King")
    )
    session.expire_all()
    again = repos.get_patient(session=session, patient_id=patient.id)
    assert (again.name, again.medical_history, again.mrn, again.birth_date) == (
        "Ada King",
        "asthma",
        "MRN-1",
        date(1815, 12, 10),
    )
    assert again.created_at.tzinfo is not None and again.created_at.utcoffset() == timedelta(0)
    assert abs(datetime.now(again.created_at.tzinfo) - again.created_at) < timedelta(minutes=5)
    assert PatientPublic.model_validate(again).department == "radiology"
    assert repos.get_patient_by_mrn(session=session, mrn="MRN-1") is again
    with pytest.raises(repos.NotFound, match="patient 999999 not found") as info:
        repos.get_patient(session=session, patient_id=999_999)
    assert info.value.code == "not_found"


def test_a_transferred_patient_takes_their_studies_along(session: Session) -> None:
    patient = _patient(session, mrn="MOVE-1")
    other = _patient(session, mrn="STAY-1")
    studies = [
        repos.create_study(session=session, study_in=StudyCreate(patient_id=p.id, task="chest"))
        for p in (patient, patient, other)
    ]
    repos.update_patient(session=session, patient_id=patient.id, patient_in=PatientUpdate(department="icu"))
    session.expire_all()
    moved = [repos.get_study(session=session, study_id=s.id).department for s in studies]
    assert moved == ["icu", "icu", "radiology"]
    repos.update_patient(session=session, patient_id=patient.id, patient_in=PatientUpdate(name="Renamed"))
    assert repos.get_study(session=session, study_id=studies[0].id).department == "icu"


def test_duplicate_mrn_is_a_conflict_and_the_session_stays_usable(session: Session) -> None:
    first = _patient(session, mrn="DUP-1")
    with pytest.raises(repos.Conflict, match="MRN 'DUP-1' already exists") as info:
        _patient(session, mrn="DUP-1", name="Someone Else")
    assert isinstance(info.value, DataError) and info.value.code == "conflict"
    assert isinstance(info.value.__cause__, IntegrityError)
    second = _patient(session, mrn="DUP-2")
    assert second.id != first.id
    with pytest.raises(repos.Conflict):
        repos.update_patient(session=session, patient_id=second.id, patient_in=PatientUpdate(mrn="DUP-1"))
    assert repos.get_patient(session=session, patient_id=second.id).mrn == "DUP-2"


def test_search_and_pagination(session: Session) -> None:
    for i in range(7):
        _patient(session, mrn=f"SRCH-{i:02d}", name=f"Person {i} Smith", department="er" if i % 2 else "icu")
    _patient(session, mrn="OTHER-1", name="Jane Doe", department="er")
    _patient(session, mrn="X-100", name="100% Real_Name", department="er")

    items, count = repos.search_patients(session=session, query="srch-", limit=3)
    assert count == 7 and [p.mrn for p in items] == ["SRCH-00", "SRCH-01", "SRCH-02"]
    items, count = repos.search_patients(session=session, query="srch-", offset=6, limit=3)
    assert count == 7 and [p.mrn for p in items] == ["SRCH-06"]
    _, count = repos.search_patients(session=session, query="SMITH", department="er")
    assert count == 3
    _, count = repos.search_patients(session=session, query="doe")
    assert count == 1
    _, count = repos.search_patients(session=session, query="mith")  # a name substring, not an MRN prefix
    assert count == 7
    _, count = repos.search_patients(session=session, query="RCH")  # not an MRN prefix, not in a name
    assert count == 0
    _, count = repos.search_patients(session=session, query="%")  # LIKE wildcards are matched literally
    assert count == 1
    _, count = repos.search_patients(session=session, query="e_l")  # would match "Real" as a wildcard
    assert count == 0
    items, count = repos.search_patients(session=session, limit=0)
    assert items == [] and count == 9

    page = Page[PatientPublic].of(*repos.search_patients(session=session, query="srch", limit=2), offset=0, limit=2)
    assert page.count == 7 and len(page.data) == 2 and page.data[0].mrn == "SRCH-00"


def test_limit_is_capped_at_500(session: Session) -> None:
    session.add_all(Patient(mrn=f"BULK-{i:04d}", name=f"Bulk {i}", department="bulk") for i in range(510))
    session.flush()
    items, count = repos.search_patients(session=session, department="bulk", limit=10_000)
    assert count == 510 and len(items) == repos.MAX_LIMIT == 500


# -- users and API keys --------------------------------------------------------------------------------------


def test_users_and_json_specialties(session: Session) -> None:
    rad = _user(session, "dr_house")
    machine = repos.create_user(
        session=session,
        user_in=UserCreate(username="pacs-bridge", full_name="PACS bridge", role="technician", password="ignored!"),
        password_hash=None,
    )
    session.expire_all()
    found = repos.get_user_by_username(session=session, username="dr_house")
    assert found is not None and found.id == rad.id
    assert found.specialties == ["chest", "msk"] and found.is_active is True
    assert repos.get_user(session=session, user_id=machine.id).password_hash is None
    assert "password_hash" not in UserPublic.model_validate(found).model_dump()
    assert repos.get_user_by_username(session=session, username="nobody") is None
    users, count = repos.list_users(session=session, role="radiologist")
    assert count == 1 and users[0].username == "dr_house"
    _, count = repos.list_users(session=session)
    assert count == 2
    with pytest.raises(repos.Conflict, match="dr_house"):
        _user(session, "dr_house")


def test_check_constraint_rejects_a_bad_role(session: Session) -> None:
    with pytest.raises(IntegrityError, match="ck_users_role"), session.begin_nested():
        session.add(User(username="mop", full_name="Mop", role="janitor", specialties=[]))
        session.flush()
    with pytest.raises(IntegrityError), session.begin_nested():
        session.add(Patient(mrn="SEX-1", name="X", department="d", sex="Q"))
        session.flush()


def test_api_keys(session: Session) -> None:
    user = _user(session, "bot", role="technician")
    key = repos.create_api_key(session=session, user_id=user.id, name="pacs", prefix="ck_abcd1", key_hash="h1")
    assert repos.get_api_key_by_prefix(session=session, prefix="ck_abcd1") is key
    assert key.user.username == "bot" and key.revoked_at is None
    with pytest.raises(repos.Conflict, match="ck_abcd1"):
        repos.create_api_key(session=session, user_id=user.id, name="again", prefix="ck_abcd1", key_hash="h2")
    with pytest.raises(repos.NotFound):
        repos.create_api_key(session=session, user_id=999_999, name="x", prefix="ck_zzzz9", key_hash="h3")
    revoked = repos.revoke_api_key(session=session, key_id=key.id)
    session.expire_all()
    assert revoked.revoked_at is not None and revoked.revoked_at.tzinfo is not None
    assert [k.prefix for k in repos.list_api_keys(session=session, user_id=user.id)] == ["ck_abcd1"]


# -- studies and images --------------------------------------------------------------------------------------


def test_studies(session: Session) -> None:
    patient = _patient(session, department="emergency")
    doctor = _user(session, "referrer")
    tech = _user(session, "tech", role="technician")
    chest = repos.create_study(
        session=session,
        study_in=StudyCreate(patient_id=patient.id, task="chest", referring_doctor_id=doctor.id, accession="ACC-1"),
        created_by_id=tech.id,
    )
    wrist = repos.create_study(session=session, study_in=StudyCreate(patient_id=patient.id, task="wrist"))
    assert (chest.department, chest.body_part, chest.created_by_id) == ("emergency", "chest", tech.id)
    assert wrist.body_part == "wrist" and wrist.referring_doctor_id is None
    assert repos.get_study(session=session, study_id=chest.id).patient.mrn == patient.mrn
    studies, count = repos.list_studies(session=session, patient_id=patient.id)
    assert count == 2 and [s.id for s in studies] == [wrist.id, chest.id]  # newest first
    studies, count = repos.list_studies(session=session, task="chest", department="emergency")
    assert count == 1 and studies[0].id == chest.id
    with pytest.raises(repos.NotFound, match="patient"):
        repos.create_study(session=session, study_in=StudyCreate(patient_id=999_999, task="chest"))
    with pytest.raises(repos.NotFound, match="user"):
        repos.create_study(
            session=session, study_in=StudyCreate(patient_id=patient.id, task="chest", referring_doctor_id=999_999)
        )


def test_foreign_keys_are_enforced(session: Session) -> None:
    """Even on SQLite: a row pointing at a missing patient is refused by the database itself."""
    with pytest.raises(IntegrityError), session.begin_nested():
        session.add(Study(patient_id=999_999, task="chest", body_part="chest", department="d"))
        session.flush()
    patient = _patient(session)
    with pytest.raises(IntegrityError), session.begin_nested():  # and a task the records do not know
        session.add(Study(patient_id=patient.id, task="knee", body_part="knee", department="d"))
        session.flush()


def test_images_are_deduplicated(session: Session) -> None:
    patient = _patient(session)
    study = repos.create_study(session=session, study_in=StudyCreate(patient_id=patient.id, task="chest"))
    common = {"session": session, "study_id": study.id, "content_type": "image/png", "size_bytes": 1234}
    first = repos.add_image(object_key="images/aa.png", sha256="a" * 64, view="pa", **common)
    again = repos.add_image(object_key="images/aa-copy.png", sha256="a" * 64, view="pa", **common)
    lateral = repos.add_image(object_key="images/aa.png", sha256="a" * 64, view="lateral", **common)
    assert again.id == first.id and again.object_key == "images/aa.png"
    assert lateral.id != first.id
    assert [i.view for i in repos.list_images(session=session, study_id=study.id)] == ["pa", "lateral"]
    assert session.scalar(select(Image.size_bytes).where(Image.id == first.id)) == 1234
    with pytest.raises(IntegrityError), session.begin_nested():  # the unique constraint backs the lookup
        session.add(
            Image(study_id=study.id, object_key="k", sha256="a" * 64, view="pa", content_type="x", size_bytes=1)
        )
        session.flush()
    with pytest.raises(repos.NotFound):
        repos.add_image(**{**common, "study_id": 999_999}, object_key="k", sha256="b" * 64, view="pa")


# -- predictions, feedback, audit ----------------------------------------------------------------------------


def test_predictions_round_trip_json(session: Session) -> None:
    patient = _patient(session)
    study = repos.create_study(session=session, study_in=StudyCreate(patient_id=patient.id, task="chest"))
    image = repos.add_image(
        session=session, study_id=study.id, object_key="k", sha256="c" * 64, view="frontal",
        content_type="image/png", size_bytes=10,
    )  # fmt: skip
    recorded = _prediction(session, study.id, image_id=image.id)
    anonymous = _prediction(session, None, label="normal", confidence="low")
    session.expire_all()
    again = repos.get_prediction(session=session, prediction_id=recorded.id)
    assert again.probabilities == {"normal": 0.1, "pneumonia": 0.85, "tuberculosis": 0.05}
    assert again.image_id == image.id and again.positive is True and again.threshold == pytest.approx(0.42)
    public = PredictionPublic.model_validate(again)
    assert public.confidence == "high" and public.model_version == "3"
    items, count = repos.list_predictions(session=session, study_id=study.id)
    assert count == 1 and items[0].id == recorded.id
    items, count = repos.list_predictions(session=session)
    assert count == 2 and items[0].id == anonymous.id and items[0].study_id is None
    with pytest.raises(IntegrityError), session.begin_nested():
        _prediction(session, None, confidence="high").confidence = "sure"
        session.flush()


def test_feedback_and_filter_by_task(session: Session) -> None:
    patient = _patient(session)
    rad = _user(session, "rad")
    chest = repos.create_study(session=session, study_in=StudyCreate(patient_id=patient.id, task="chest"))
    wrist = repos.create_study(session=session, study_in=StudyCreate(patient_id=patient.id, task="wrist"))
    _prediction(session, chest.id, label="normal")
    latest = _prediction(session, chest.id, label="pneumonia")
    agree = repos.add_feedback(
        session=session, study_id=chest.id, radiologist_id=rad.id, feedback_in=FeedbackCreate(true_label="Pneumonia")
    )
    assert (agree.prediction_id, agree.predicted_label, agree.agrees) == (latest.id, "pneumonia", True)
    wrist_pred = _prediction(session, wrist.id, label="fracture", task="wrist", probabilities={"fracture": 0.7})
    disagree = repos.add_feedback(
        session=session,
        study_id=wrist.id,
        radiologist_id=rad.id,
        prediction_id=wrist_pred.id,
        feedback_in=FeedbackCreate(true_label="normal", comment="old healed fracture"),
        object_key="feedback/wrist/NORMAL/abc.png",
    )
    assert disagree.agrees is False and disagree.comment == "old healed fracture"
    with pytest.raises(DataError, match="not a prediction of study"):
        repos.add_feedback(
            session=session,
            study_id=chest.id,
            radiologist_id=rad.id,
            prediction_id=wrist_pred.id,
            feedback_in=FeedbackCreate(true_label="normal"),
        )
    no_prediction = repos.create_study(session=session, study_in=StudyCreate(patient_id=patient.id, task="chest"))
    blind = repos.add_feedback(
        session=session, study_id=no_prediction.id, radiologist_id=rad.id, feedback_in=FeedbackCreate(true_label="x")
    )
    assert blind.prediction_id is None and blind.predicted_label is None and blind.agrees is False

    items, count = repos.list_feedback(session=session, task="wrist")
    assert count == 1 and items[0].id == disagree.id
    assert FeedbackPublic.model_validate(items[0]).object_key == "feedback/wrist/NORMAL/abc.png"
    items, count = repos.list_feedback(session=session, task="chest")
    assert count == 2 and {f.id for f in items} == {agree.id, blind.id}
    _, count = repos.list_feedback(session=session)
    assert count == 3
    assert session.scalar(select(Feedback.agrees).where(Feedback.id == agree.id)) is True


def test_audit_rows_are_written_and_listed(session: Session) -> None:
    user = _user(session, "auditor", role="admin")
    patient = _patient(session)
    repos.write_audit(
        session=session, user=user, action="patient.read", resource_type="patient", resource_id=patient.id
    )
    repos.write_audit(
        session=session,
        user=None,
        action="prediction.create",
        resource_type="prediction",
        resource_id="17",
        request_id="req-1",
        detail={"task": "chest", "label": "normal", "nested": {"n": [1, 2]}},
    )
    repos.write_audit(
        session=session, user=user, action="patient.update", resource_type="patient", resource_id=patient.id
    )
    session.expire_all()
    rows, count = repos.list_audit(session=session, resource_type="patient", resource_id=patient.id)
    assert count == 2 and [r.action for r in rows] == ["patient.update", "patient.read"]
    assert rows[0].username == "auditor" and rows[0].user_id == user.id and rows[0].at.tzinfo is not None
    rows, count = repos.list_audit(session=session, action="prediction.create")
    assert count == 1
    assert (rows[0].username, rows[0].user_id, rows[0].request_id) == ("anonymous", None, "req-1")
    assert rows[0].detail == {"task": "chest", "label": "normal", "nested": {"n": [1, 2]}}
    _, count = repos.list_audit(session=session, user_id=user.id)
    assert count == 2
    _, count = repos.list_audit(session=session, since=datetime.now(rows[0].at.tzinfo) + timedelta(hours=1))
    assert count == 0
