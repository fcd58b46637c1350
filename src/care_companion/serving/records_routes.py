"""Patients, studies and the audit log over HTTP: thin routes over :mod:`care_companion.records.repos`.

Every route needs a signed-in user with READ_RECORDS (reads) or WRITE_RECORDS (writes); technicians and
radiologists see their own department only (another department's record answers 404, like a missing one),
admins see all. Every read or write of patient data appends an audit row in the same transaction: who, what
action, which resource, and ids and counts only, never names, MRNs or search text.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import Field
from sqlalchemy.orm import Session

from care_companion.errors import RequestError
from care_companion.records.models import Image, Patient, Study, User
from care_companion.records.repos import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    create_patient,
    create_study,
    get_patient,
    get_study,
    list_audit,
    list_feedback,
    list_images,
    list_predictions,
    list_studies,
    search_patients,
    update_patient,
)
from care_companion.records.schemas import (
    AuditPublic,
    FeedbackPublic,
    ImagePublic,
    Page,
    PatientBase,
    PatientCreate,
    PatientPublic,
    PatientUpdate,
    PredictionPublic,
    StudyCreate,
    StudyPublic,
    Task,
)
from care_companion.security import Permission
from care_companion.serving.auth import (
    AUTH_ERRORS,
    SessionDep,
    audit,
    check_assignable,
    check_department,
    require,
    visible_department,
)
from care_companion.serving.schemas import ErrorBody

Reader = Annotated[User, Depends(require(Permission.READ_RECORDS))]
Writer = Annotated[User, Depends(require(Permission.WRITE_RECORDS))]
Auditor = Annotated[User, Depends(require(Permission.READ_AUDIT))]
Offset = Annotated[int, Query(ge=0, description="Rows to skip.")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Most rows to return.")]

NOT_NULL_FIELDS = ("mrn", "name", "sex", "medical_history", "department")

RECORD_ERRORS: dict[int | str, dict[str, Any]] = {
    **AUTH_ERRORS,
    404: {"model": ErrorBody, "description": "No such record, or one of another department."},
}
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorBody, "description": "The MRN belongs to another patient."}
}

records_router = APIRouter(tags=["records"], responses=RECORD_ERRORS)


class PatientCreateRequest(PatientBase):
    """A new patient; an empty department means the caller's own."""

    department: str = Field(default="", max_length=100)


# -- helpers (business rules the routes share) ---------------------------------------------------------------


def visible_patient(session: Session, user: User, patient_id: int) -> Patient:
    """The patient, if it exists and is in a department ``user`` sees; :class:`NotFound` otherwise."""
    patient = get_patient(session=session, patient_id=patient_id)
    check_department(user, patient.department, what=f"patient {patient_id}")
    return patient


def visible_study(session: Session, user: User, study_id: int) -> Study:
    """The study, if it exists and is in a department ``user`` sees; :class:`NotFound` otherwise."""
    study = get_study(session=session, study_id=study_id)
    check_department(user, study.department, what=f"study {study_id}")
    return study


def new_patient_department(user: User, requested: str) -> str:
    """The department a new patient goes to: the one asked for (own only, unless admin), else the user's."""
    department = requested.strip() or user.department
    if not department:
        raise RequestError("department is required (your account has no department)", code="department_required")
    check_assignable(user, department)
    return department


def checked_update(user: User, patient_in: PatientUpdate) -> PatientUpdate:
    """Refuse explicit nulls for required fields (422) and moves to a department the user may not use (403)."""
    nulls = sorted(f for f in patient_in.model_fields_set if f in NOT_NULL_FIELDS and getattr(patient_in, f) is None)
    if nulls:
        raise RequestError(f"{', '.join(nulls)} may not be null", code="invalid_request")
    if patient_in.department is not None:
        check_assignable(user, patient_in.department)
    return patient_in


def _ids(rows: list[Any]) -> list[int]:
    return [row.id for row in rows]


# -- patients ------------------------------------------------------------------------------------------------


@records_router.post(
    "/v1/patients", status_code=201, response_model=PatientPublic, responses=CONFLICT, summary="Add a patient"
)
def add_patient(body: PatientCreateRequest, session: SessionDep, user: Writer, request: Request) -> Patient:
    """Add a patient in the caller's department (admins: any department given)."""
    department = new_patient_department(user, body.department)
    patient_in = PatientCreate.model_validate({**body.model_dump(), "department": department})
    patient = create_patient(session=session, patient_in=patient_in)
    audit(session, user, request, "patient.create", "patient", patient.id, department=department)
    return patient


@records_router.get("/v1/patients", response_model=Page[PatientPublic], summary="Search patients")
def find_patients(
    session: SessionDep,
    user: Reader,
    request: Request,
    q: Annotated[str | None, Query(max_length=200, description="MRN prefix or part of the name.")] = None,
    offset: Offset = 0,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[PatientPublic]:
    """Patients of the caller's department (admins: all) whose MRN starts with ``q`` or whose name contains it."""
    items, count = search_patients(
        session=session, query=q, department=visible_department(user), offset=offset, limit=limit
    )
    audit(
        session,
        user,
        request,
        "patient.search",
        "patient",
        query_given=bool(q and q.strip()),
        count=count,
        offset=offset,
        ids=_ids(items),
    )
    return Page[PatientPublic].of(items, count, offset=offset, limit=limit)


@records_router.get("/v1/patients/{patient_id}", response_model=PatientPublic, summary="One patient")
def read_patient(patient_id: int, session: SessionDep, user: Reader, request: Request) -> Patient:
    """A patient of the caller's department (admins: any)."""
    patient = visible_patient(session, user, patient_id)
    audit(session, user, request, "patient.read", "patient", patient.id)
    return patient


@records_router.patch(
    "/v1/patients/{patient_id}", response_model=PatientPublic, responses=CONFLICT, summary="Change a patient"
)
def change_patient(
    patient_id: int, body: PatientUpdate, session: SessionDep, user: Writer, request: Request
) -> Patient:
    """Change the fields sent; non-admins cannot move a patient to another department."""
    visible_patient(session, user, patient_id)
    patient_in = checked_update(user, body)
    patient = update_patient(session=session, patient_id=patient_id, patient_in=patient_in)
    audit(session, user, request, "patient.update", "patient", patient.id, fields=sorted(patient_in.model_fields_set))
    return patient


# -- studies -------------------------------------------------------------------------------------------------


@records_router.post("/v1/studies", status_code=201, response_model=StudyPublic, summary="Add a study")
def add_study(body: StudyCreate, session: SessionDep, user: Writer, request: Request) -> Study:
    """Add a study (visit) of a patient the caller can see; it takes the patient's department."""
    visible_patient(session, user, body.patient_id)
    study = create_study(session=session, study_in=body, created_by_id=user.id)
    audit(session, user, request, "study.create", "study", study.id, patient_id=study.patient_id, task=study.task)
    return study


@records_router.get("/v1/studies", response_model=Page[StudyPublic], summary="List studies")
def find_studies(
    session: SessionDep,
    user: Reader,
    request: Request,
    patient_id: int | None = None,
    task: Task | None = None,
    offset: Offset = 0,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[StudyPublic]:
    """Studies of the caller's department (admins: all), newest first, optionally of one patient or task."""
    if patient_id is not None:
        visible_patient(session, user, patient_id)
    items, count = list_studies(
        session=session,
        patient_id=patient_id,
        department=visible_department(user),
        task=task,
        offset=offset,
        limit=limit,
    )
    audit(
        session,
        user,
        request,
        "study.list",
        "study",
        patient_id=patient_id,
        task=task,
        count=count,
        offset=offset,
        ids=_ids(items),
    )
    return Page[StudyPublic].of(items, count, offset=offset, limit=limit)


@records_router.get("/v1/studies/{study_id}", response_model=StudyPublic, summary="One study")
def read_study(study_id: int, session: SessionDep, user: Reader, request: Request) -> Study:
    """A study of the caller's department (admins: any)."""
    study = visible_study(session, user, study_id)
    audit(session, user, request, "study.read", "study", study.id, patient_id=study.patient_id)
    return study


@records_router.get("/v1/studies/{study_id}/images", response_model=list[ImagePublic], summary="A study's images")
def read_study_images(study_id: int, session: SessionDep, user: Reader, request: Request) -> list[Image]:
    """The study's images in upload order (their bytes are in the object store under ``object_key``)."""
    study = visible_study(session, user, study_id)
    images = list_images(session=session, study_id=study.id)
    audit(session, user, request, "study.images", "study", study.id, patient_id=study.patient_id, ids=_ids(images))
    return images


@records_router.get(
    "/v1/studies/{study_id}/predictions", response_model=Page[PredictionPublic], summary="A study's predictions"
)
def read_study_predictions(
    study_id: int, session: SessionDep, user: Reader, request: Request, offset: Offset = 0, limit: Limit = DEFAULT_LIMIT
) -> Page[PredictionPublic]:
    """The model's answers for the study, newest first."""
    study = visible_study(session, user, study_id)
    items, count = list_predictions(session=session, study_id=study.id, offset=offset, limit=limit)
    audit(
        session,
        user,
        request,
        "study.predictions",
        "study",
        study.id,
        patient_id=study.patient_id,
        count=count,
        ids=_ids(items),
    )
    return Page[PredictionPublic].of(items, count, offset=offset, limit=limit)


@records_router.get(
    "/v1/studies/{study_id}/feedback", response_model=Page[FeedbackPublic], summary="Radiologists' verdicts"
)
def read_study_feedback(
    study_id: int, session: SessionDep, user: Reader, request: Request, offset: Offset = 0, limit: Limit = DEFAULT_LIMIT
) -> Page[FeedbackPublic]:
    """Radiologists' verdicts on the study, oldest first."""
    study = visible_study(session, user, study_id)
    items, count = list_feedback(session=session, study_id=study.id, offset=offset, limit=limit)
    audit(
        session,
        user,
        request,
        "study.feedback",
        "study",
        study.id,
        patient_id=study.patient_id,
        count=count,
        ids=_ids(items),
    )
    return Page[FeedbackPublic].of(items, count, offset=offset, limit=limit)


# -- audit log -----------------------------------------------------------------------------------------------


@records_router.get("/v1/audit", response_model=Page[AuditPublic], summary="Audit log (admins)")
def read_audit(
    session: SessionDep,
    user: Auditor,
    resource_type: Annotated[str | None, Query(max_length=64)] = None,
    resource_id: Annotated[str | None, Query(max_length=64)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    offset: Offset = 0,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[AuditPublic]:
    """Audit rows, newest first, optionally of one resource or action."""
    items, count = list_audit(
        session=session,
        resource_type=resource_type,
        resource_id=resource_id,
        action=action,
        offset=offset,
        limit=limit,
    )
    return Page[AuditPublic].of(items, count, offset=offset, limit=limit)
