"""Pydantic schemas at the records boundary: ``XCreate`` in, ``XPublic`` out, and a generic :class:`Page`."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from care_companion.errors import ConfigError
from care_companion.security import MIN_PASSWORD_LENGTH, Role
from care_companion.tasks import get_task

Sex = Literal["F", "M", "O", "U"]
Confidence = Literal["high", "low"]


def _registered(name: str) -> str:
    try:
        return get_task(name).name
    except ConfigError as exc:
        raise ValueError(exc.detail) from None


Task = Annotated[str, AfterValidator(_registered), Field(description="A registered task (GET /v1/tasks).")]

T = TypeVar("T")


class _Public(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class PatientBase(BaseModel):
    """Fields a patient is created with."""

    mrn: str = Field(min_length=1, max_length=64, description="Medical record number, unique in the hospital.")
    name: str = Field(min_length=1, max_length=200)
    birth_date: date | None = None
    sex: Sex = "U"
    medical_history: str = ""
    department: str = Field(min_length=1, max_length=100)


class PatientCreate(PatientBase):
    """A new patient."""


class PatientUpdate(BaseModel):
    """A partial update: only the fields set are changed."""

    mrn: str | None = Field(default=None, min_length=1, max_length=64)
    name: str | None = Field(default=None, min_length=1, max_length=200)
    birth_date: date | None = None
    sex: Sex | None = None
    medical_history: str | None = None
    department: str | None = Field(default=None, min_length=1, max_length=100)


class PatientPublic(_Public, PatientBase):
    """A patient as the API shows it."""

    id: int
    created_at: datetime


class UserCreate(BaseModel):
    """A new user; ``password`` is hashed by the caller (security), never stored as given."""

    username: str = Field(min_length=1, max_length=64)
    full_name: str = Field(min_length=1, max_length=200)
    role: Role
    specialties: list[str] = Field(default_factory=list)
    department: str = Field(default="", max_length=100)
    password: str | None = Field(
        default=None,
        min_length=MIN_PASSWORD_LENGTH,
        description="None for machine users that sign in with API keys (or, over HTTP, for a generated one).",
    )


class UserPublic(_Public):
    """A user without secrets."""

    id: int
    username: str
    full_name: str
    role: Role
    specialties: list[str]
    department: str
    is_active: bool
    created_at: datetime


class UserUpdate(BaseModel):
    """A partial update of a user: only the fields sent are changed, and none may be sent as null."""

    full_name: str | None = Field(default=None, min_length=1, max_length=200)
    role: Role | None = None
    specialties: list[str] | None = None
    department: str | None = Field(default=None, max_length=100)
    is_active: bool | None = Field(default=None, description="False disables the user (tokens and API keys too).")

    @model_validator(mode="after")
    def _no_nulls(self) -> UserUpdate:
        nulls = sorted(name for name in self.model_fields_set if getattr(self, name) is None)
        if nulls:
            raise ValueError(f"{', '.join(nulls)} may not be null")
        return self


class ApiKeyPublic(_Public):
    """An API key without its hash."""

    id: int
    user_id: int
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


class StudyCreate(BaseModel):
    """A new study (visit); its department is the patient's, its body part defaults to the task's."""

    patient_id: int
    task: Task
    body_part: str | None = Field(default=None, max_length=50)
    referring_doctor_id: int | None = None
    accession: str | None = Field(default=None, max_length=64)

    @model_validator(mode="after")
    def _default_body_part(self) -> StudyCreate:
        if not self.body_part:
            self.body_part = get_task(self.task).body_part
        return self


class StudyPublic(_Public):
    """A study as the API shows it."""

    id: int
    patient_id: int
    referring_doctor_id: int | None
    task: Task
    body_part: str
    department: str
    accession: str | None
    created_at: datetime
    created_by_id: int | None


class ImagePublic(_Public):
    """An image of a study (its bytes live in the object store under ``object_key``)."""

    id: int
    study_id: int
    object_key: str
    sha256: str
    view: str
    content_type: str
    size_bytes: int
    created_at: datetime


class PredictionCreate(BaseModel):
    """A model's answer to record; ``study_id`` None for an anonymous prediction."""

    study_id: int | None = None
    image_id: int | None = None
    request_id: str = Field(max_length=64)
    task: Task
    model_name: str = Field(max_length=200)
    model_version: str | None = Field(default=None, max_length=50)
    probabilities: dict[str, float]
    label: str = Field(max_length=50)
    threshold: float
    positive: bool
    confidence: Confidence
    latency_ms: float = Field(ge=0)
    heatmap: dict[str, Any] | None = Field(
        default=None, description="The heat map per view: the map on the model's grid and the film's size."
    )
    confidence_reasons: list[str] | None = Field(default=None, description="Why confidence is low, if it is.")


class PredictionPublic(_Public, PredictionCreate):
    """A recorded prediction."""

    id: int
    created_at: datetime


class FeedbackCreate(BaseModel):
    """A radiologist's verdict on a study."""

    true_label: str = Field(min_length=1, max_length=50)
    comment: str = ""


class FeedbackPublic(_Public):
    """A recorded verdict, with the model's label it was compared to."""

    id: int
    study_id: int
    prediction_id: int | None
    radiologist_id: int
    predicted_label: str | None
    true_label: str
    agrees: bool
    comment: str
    object_key: str | None
    created_at: datetime


DicomAction = Literal["dicom.received", "dicom.sent"]
_DICOM_UID = r"^[0-9.]{0,64}$"


class DicomEvent(BaseModel):
    """A DICOM instance the receiver took (with the status it answered) or sent to the PACS."""

    action: DicomAction
    sop_instance_uid: str = Field(max_length=64, pattern=_DICOM_UID)
    study_uid: str = Field(default="", max_length=64, pattern=_DICOM_UID)
    sop_class_uid: str = Field(default="", max_length=64, pattern=_DICOM_UID)
    status: int = Field(default=0, ge=0, le=0xFFFF, description="The DICOM status answered or received.")
    peer: str = Field(default="", max_length=16, description="The calling AE title (received) or the destination's.")
    at: datetime = Field(description="When the instance was received or sent.")


class DicomEvents(BaseModel):
    """A batch of the receiver's DICOM events."""

    events: list[DicomEvent] = Field(min_length=1, max_length=1000)


class AuditPublic(_Public):
    """One audit log row."""

    id: int
    at: datetime
    user_id: int | None
    username: str
    action: str
    resource_type: str
    resource_id: str | None
    request_id: str | None
    detail: dict[str, Any]


class Page(BaseModel, Generic[T]):
    """One page of a list: its items, the total matching count, and where the page starts."""

    data: list[T]
    count: int
    offset: int
    limit: int

    @classmethod
    def of(cls, items: list[Any], count: int, *, offset: int, limit: int) -> Page[T]:
        """A page from ORM rows (read through the item schema's attributes)."""
        return cls.model_validate(
            {"data": items, "count": count, "offset": offset, "limit": limit}, from_attributes=True
        )


WorklistStatus = Literal["awaiting", "reviewed"]
Priority = Literal["flagged", "low_confidence", "routine"]


class WorklistItem(BaseModel):
    """A study on a radiologist's worklist: its patient, the AI's latest answer and, once read, the verdict."""

    study_id: int
    task: Task
    department: str
    accession: str | None
    study_created_at: datetime
    patient_id: int
    patient_mrn: str
    patient_name: str
    priority: Priority = Field(
        description="flagged: the AI's decision is positive; low_confidence: negative but low-confidence; routine: "
        "the rest. The worklist reads flagged studies first, then low-confidence ones, then the rest."
    )
    prediction_id: int
    label: str = Field(description="The AI's decided class.")
    positive: bool
    confidence: Confidence
    confidence_reasons: list[str] = Field(default_factory=list, description="Why the AI's confidence is low, if it is.")
    probabilities: dict[str, float]
    waiting_since: datetime = Field(description="When the AI's latest answer for the study was given.")
    images: dict[str, int] = Field(
        default_factory=dict, description="The study's latest stored image of each view, by view (image ids)."
    )
    reviewed_at: datetime | None = None
    reviewed_by: str | None = Field(default=None, description="Username of the radiologist who read it.")
    true_label: str | None = None
    agrees: bool | None = Field(default=None, description="Whether the radiologist's verdict matched the AI's label.")
