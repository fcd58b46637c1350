"""The records tables: patients, users and their API keys, studies, images, predictions, feedback, audit log.

Typed SQLAlchemy 2 models. Constrained values (sex, role, confidence) are plain strings guarded by named
CHECK constraints rather than database enums, so adding a value is a one-line migration on every backend. A
task is a row of ``tasks`` that studies, predictions and drift checks point at: the rows are written from the
task registry (:func:`care_companion.records.repos.ensure_task`), so a new task needs no migration.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from care_companion.security import Role

SEXES = ("F", "M", "O", "U")
ROLES = tuple(role.value for role in Role)
CONFIDENCES = ("high", "low")
# Upper edges (ms) of the serving-latency histogram buckets of ServingStat; one more bucket holds the rest.
LATENCY_BUCKETS_MS = (5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 2000, 5000)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_N_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp stored in UTC; values read back are aware on every backend (SQLite too)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: records timestamps must be timezone-aware")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    """Declarative base of the records tables, with a naming convention so every constraint has a stable name."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _created_at() -> Mapped[datetime]:
    return mapped_column(UTCDateTime(), default=utcnow, server_default=func.now(), nullable=False)


class Patient(Base):
    """A patient, identified by the hospital's medical record number (MRN)."""

    __tablename__ = "patients"
    __table_args__ = (CheckConstraint(_in("sex", SEXES), name="sex"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    mrn: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    name: Mapped[str] = mapped_column(String(200))
    birth_date: Mapped[date | None] = mapped_column(Date)
    sex: Mapped[str] = mapped_column(String(1), default="U", server_default="U")
    medical_history: Mapped[str] = mapped_column(Text, default="", server_default="")
    department: Mapped[str] = mapped_column(String(100), index=True)
    created_at: Mapped[datetime] = _created_at()


class User(Base):
    """A doctor, technician or administrator; machine users have no password and sign in with API keys."""

    __tablename__ = "users"
    __table_args__ = (CheckConstraint(_in("role", ROLES), name="role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    full_name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))
    specialties: Mapped[list[str]] = mapped_column(JSON, default=list)
    department: Mapped[str] = mapped_column(String(100), default="", server_default="")
    password_hash: Mapped[str | None] = mapped_column(String(255))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    created_at: Mapped[datetime] = _created_at()


class ApiKey(Base):
    """An API key of a user; only its hash is stored, ``prefix`` (its first 8 characters) finds it."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16), unique=True, index=True)
    key_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = _created_at()
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    user: Mapped[User] = relationship()


class TaskRow(Base):
    """A registered task as the records know it (written from the task registry on first use)."""

    __tablename__ = "tasks"

    name: Mapped[str] = mapped_column(String(20), primary_key=True)
    body_part: Mapped[str] = mapped_column(String(50))
    views: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = _created_at()


class Study(Base):
    """A visit: one patient, one task (chest, wrist, ...), its images, predictions and feedback."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    referring_doctor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    task: Mapped[str] = mapped_column(ForeignKey("tasks.name"))
    body_part: Mapped[str] = mapped_column(String(50))
    department: Mapped[str] = mapped_column(String(100), index=True)
    accession: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = _created_at()
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))

    patient: Mapped[Patient] = relationship()


class Image(Base):
    """An image of a study, kept in the object store under ``object_key``; one row per (study, content, view)."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("study_id", "sha256", "view"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"))
    object_key: Mapped[str] = mapped_column(String(500))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    view: Mapped[str] = mapped_column(String(20))
    content_type: Mapped[str] = mapped_column(String(100))
    size_bytes: Mapped[int] = mapped_column(Integer)
    dicom_study_uid: Mapped[str | None] = mapped_column(String(64), index=True)  # StudyInstanceUID of a DICOM upload
    created_at: Mapped[datetime] = _created_at()


class Prediction(Base):
    """A model's answer for an image; ``study_id`` is empty for anonymous predictions."""

    __tablename__ = "predictions"
    __table_args__ = (CheckConstraint(_in("confidence", CONFIDENCES), name="confidence"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id"), index=True)
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id"))
    request_id: Mapped[str] = mapped_column(String(64), index=True)
    task: Mapped[str] = mapped_column(ForeignKey("tasks.name"))
    model_name: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[str | None] = mapped_column(String(50))
    probabilities: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    label: Mapped[str] = mapped_column(String(50))
    threshold: Mapped[float] = mapped_column(Float)
    positive: Mapped[bool] = mapped_column(Boolean)
    confidence: Mapped[str] = mapped_column(String(10))
    latency_ms: Mapped[float] = mapped_column(Float)
    heatmap: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # see serving.schemas.Heatmap
    confidence_reasons: Mapped[list[str] | None] = mapped_column(JSON)  # why confidence is low
    created_at: Mapped[datetime] = _created_at()


class ShadowPrediction(Base):
    """A canary's answer in shadow mode (``CARE_CANARY_MODE=shadow``) on the films of a prediction production
    answered: kept to compare the two models on identical films, never shown to anyone."""

    __tablename__ = "shadow_predictions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id"), index=True)  # production's, shown
    task: Mapped[str] = mapped_column(ForeignKey("tasks.name"))
    model_name: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[str | None] = mapped_column(String(50), index=True)
    probabilities: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    label: Mapped[str] = mapped_column(String(50))  # the decided class; the refusal code when refused
    positive: Mapped[bool] = mapped_column(Boolean)
    refused: Mapped[bool] = mapped_column(Boolean)  # the canary would have refused the input (422)
    latency_ms: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = _created_at()


class ServingStat(Base):
    """One replica's traffic for one model version over one period: answered, refused and failed requests, and a
    latency histogram (counts per :data:`LATENCY_BUCKETS_MS` bucket, the last one unbounded). Summed over
    replicas and periods for the release report's error rate and latency percentile."""

    __tablename__ = "serving_stats"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = _created_at()  # end of the period
    task: Mapped[str] = mapped_column(ForeignKey("tasks.name"))
    model_version: Mapped[str | None] = mapped_column(String(50), index=True)
    role: Mapped[str] = mapped_column(String(20))  # production, canary or shadow
    replica: Mapped[str] = mapped_column(String(200))
    requests: Mapped[int] = mapped_column(Integer)
    errors: Mapped[int] = mapped_column(Integer)
    refused: Mapped[int] = mapped_column(Integer)
    latency_counts: Mapped[list[int]] = mapped_column(JSON, default=list)


class Feedback(Base):
    """A radiologist's verdict on a study: the true label, whether it agrees with the model, a comment."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    prediction_id: Mapped[int | None] = mapped_column(ForeignKey("predictions.id"))
    radiologist_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    predicted_label: Mapped[str | None] = mapped_column(String(50))
    true_label: Mapped[str] = mapped_column(String(50))
    agrees: Mapped[bool] = mapped_column(Boolean)
    comment: Mapped[str] = mapped_column(Text, default="", server_default="")
    object_key: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = _created_at()


class FhirPush(Base):
    """What a FHIR server was last sent of a prediction: its report status and how many verdicts it showed."""

    __tablename__ = "fhir_pushes"

    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id"), primary_key=True)
    verdicts: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20))
    pushed_at: Mapped[datetime] = _created_at()


class DriftCheck(Base):
    """One drift check of a task's rolling window of recent inputs (the service writes one per check)."""

    __tablename__ = "drift_checks"
    __table_args__ = (Index("ix_drift_checks_task_at", "task", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, server_default=func.now(), nullable=False)
    task: Mapped[str] = mapped_column(ForeignKey("tasks.name"))
    model_version: Mapped[str | None] = mapped_column(String(50))
    window_inputs: Mapped[int] = mapped_column(Integer)
    window_images: Mapped[int] = mapped_column(Integer)
    drifted: Mapped[bool | None] = mapped_column(Boolean)
    p_values: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class AuditLog(Base):
    """Who did what to which record, and when; ``username`` is kept so a row outlives its user."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_resource", "resource_type", "resource_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(
        UTCDateTime(), default=utcnow, server_default=func.now(), nullable=False, index=True
    )
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    username: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    resource_type: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
