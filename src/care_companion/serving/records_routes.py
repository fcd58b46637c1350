"""Patients, studies and the audit log over HTTP: thin routes over :mod:`care_companion.access.patients`.

Every route needs a signed-in user with READ_RECORDS (reads) or WRITE_RECORDS (writes); technicians and
radiologists see their own department only (another department's record answers 404, like a missing one),
admins see all. Every read or write of patient data appends an audit row in the same transaction: who, what
action, which resource, and ids and counts only, never names, MRNs or search text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response

from care_companion.access import patients
from care_companion.access.worklist import worklist
from care_companion.imaging.decode import DecodeLimits, display_png
from care_companion.models.heatmap import stored_heatmap_png
from care_companion.records.models import Image, Patient, Study
from care_companion.records.repos import DEFAULT_LIMIT, MAX_LIMIT, list_audit
from care_companion.records.schemas import (
    AuditPublic,
    FeedbackPublic,
    ImagePublic,
    Page,
    PatientPublic,
    PatientUpdate,
    PredictionPublic,
    StudyCreate,
    StudyPublic,
    Task,
    WorklistItem,
    WorklistStatus,
)
from care_companion.serving.deps import Auditor, Reader, RequestId, SessionDep, SettingsDep, StoreDep, Writer
from care_companion.serving.schemas import AUTH_ERRORS, PatientCreateRequest, error_doc
from care_companion.storage.base import store_errors

Offset = Annotated[int, Query(ge=0, description="Rows to skip.")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Most rows to return.")]

RECORD_ERRORS: dict[int | str, dict[str, Any]] = {
    **AUTH_ERRORS,
    404: error_doc("No such record, or one of another department."),
}
CONFLICT: dict[int | str, dict[str, Any]] = {409: error_doc("The MRN belongs to another patient.")}

records_router = APIRouter(tags=["records"], responses=RECORD_ERRORS)


# -- patients ------------------------------------------------------------------------------------------------


@records_router.post(
    "/v1/patients", status_code=201, response_model=PatientPublic, responses=CONFLICT, summary="Add a patient"
)
def add_patient(body: PatientCreateRequest, session: SessionDep, user: Writer, request_id: RequestId) -> Patient:
    """Add a patient in the caller's department (admins: any department given)."""
    return patients.add_patient(session=session, user=user, patient_in=body, request_id=request_id)


@records_router.post(
    "/v1/patients/match",
    response_model=PatientPublic,
    responses={201: {"model": PatientPublic, "description": "Not found: added."}, **CONFLICT},
    summary="Find a patient by MRN, or add them",
)
def match_patient(
    body: PatientCreateRequest, session: SessionDep, user: Writer, request_id: RequestId, response: Response
) -> Patient:
    """The patient with the body's MRN when you see them (200), else a new patient from the body in your department
    (201), in one transaction: for systems that name patients by MRN, such as the DICOM receiver. The MRN of
    another department's patient is 404."""
    patient, created = patients.patient_for_mrn(session=session, user=user, patient_in=body, request_id=request_id)
    response.status_code = 201 if created else 200
    return patient


@records_router.get("/v1/patients", response_model=Page[PatientPublic], summary="Search patients")
def find_patients(
    session: SessionDep,
    user: Reader,
    request_id: RequestId,
    q: Annotated[str | None, Query(max_length=200, description="MRN prefix or part of the name.")] = None,
    offset: Offset = 0,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[PatientPublic]:
    """Patients of the caller's department (admins: all) whose MRN starts with ``q`` or whose name contains it."""
    items, count = patients.find_patients(
        session=session, user=user, query=q, offset=offset, limit=limit, request_id=request_id
    )
    return Page[PatientPublic].of(items, count, offset=offset, limit=limit)


@records_router.get("/v1/patients/{patient_id}", response_model=PatientPublic, summary="One patient")
def read_patient(patient_id: int, session: SessionDep, user: Reader, request_id: RequestId) -> Patient:
    """A patient of the caller's department (admins: any)."""
    return patients.read_patient(session=session, user=user, patient_id=patient_id, request_id=request_id)


@records_router.patch(
    "/v1/patients/{patient_id}", response_model=PatientPublic, responses=CONFLICT, summary="Change a patient"
)
def change_patient(
    patient_id: int, body: PatientUpdate, session: SessionDep, user: Writer, request_id: RequestId
) -> Patient:
    """Change the fields sent; non-admins cannot move a patient to another department."""
    return patients.change_patient(
        session=session, user=user, patient_id=patient_id, patient_in=body, request_id=request_id
    )


# -- studies -------------------------------------------------------------------------------------------------


@records_router.post("/v1/studies", status_code=201, response_model=StudyPublic, summary="Add a study")
def add_study(body: StudyCreate, session: SessionDep, user: Writer, request_id: RequestId) -> Study:
    """Add a study (visit) of a patient the caller can see; it takes the patient's department."""
    return patients.add_study(session=session, user=user, study_in=body, request_id=request_id)


@records_router.get("/v1/studies", response_model=Page[StudyPublic], summary="List studies")
def find_studies(
    session: SessionDep,
    user: Reader,
    request_id: RequestId,
    patient_id: int | None = None,
    task: Task | None = None,
    offset: Offset = 0,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[StudyPublic]:
    """Studies of the caller's department (admins: all), newest first, optionally of one patient or task."""
    items, count = patients.find_studies(
        session=session,
        user=user,
        patient_id=patient_id,
        task=task,
        offset=offset,
        limit=limit,
        request_id=request_id,
    )
    return Page[StudyPublic].of(items, count, offset=offset, limit=limit)


@records_router.get("/v1/studies/{study_id}", response_model=StudyPublic, summary="One study")
def read_study(study_id: int, session: SessionDep, user: Reader, request_id: RequestId) -> Study:
    """A study of the caller's department (admins: any)."""
    return patients.read_study(session=session, user=user, study_id=study_id, request_id=request_id)


@records_router.get("/v1/studies/{study_id}/images", response_model=list[ImagePublic], summary="A study's images")
def read_study_images(study_id: int, session: SessionDep, user: Reader, request_id: RequestId) -> list[Image]:
    """The study's images in upload order (their bytes are in the object store under ``object_key``)."""
    return patients.study_images(session=session, user=user, study_id=study_id, request_id=request_id)


@dataclass(frozen=True)
class StudyRows:
    """A page of one study's rows, as the path and query ask for it."""

    study_id: int
    offset: int
    limit: int


def study_rows(study_id: int, offset: Offset = 0, limit: Limit = DEFAULT_LIMIT) -> StudyRows:
    """The study of the path and the page (``offset``, ``limit``) of the query."""
    return StudyRows(study_id=study_id, offset=offset, limit=limit)


StudyRowsQuery = Annotated[StudyRows, Depends(study_rows)]


@records_router.get(
    "/v1/studies/{study_id}/predictions", response_model=Page[PredictionPublic], summary="A study's predictions"
)
def read_study_predictions(
    rows: StudyRowsQuery, session: SessionDep, user: Reader, request_id: RequestId
) -> Page[PredictionPublic]:
    """The model's answers for the study, newest first."""
    items, count = patients.study_predictions(
        session=session, user=user, study_id=rows.study_id, offset=rows.offset, limit=rows.limit, request_id=request_id
    )
    return Page[PredictionPublic].of(items, count, offset=rows.offset, limit=rows.limit)


@records_router.get(
    "/v1/studies/{study_id}/feedback", response_model=Page[FeedbackPublic], summary="Radiologists' verdicts"
)
def read_study_feedback(
    rows: StudyRowsQuery, session: SessionDep, user: Reader, request_id: RequestId
) -> Page[FeedbackPublic]:
    """Radiologists' verdicts on the study, oldest first."""
    items, count = patients.study_feedback(
        session=session, user=user, study_id=rows.study_id, offset=rows.offset, limit=rows.limit, request_id=request_id
    )
    return Page[FeedbackPublic].of(items, count, offset=rows.offset, limit=rows.limit)


@records_router.get("/v1/worklist", response_model=Page[WorklistItem], summary="The radiologists' worklist")
def read_worklist(
    session: SessionDep,
    user: Reader,
    request_id: RequestId,
    task: Annotated[str | None, Query(max_length=20, description="Only studies of this task.")] = None,
    status: Annotated[
        WorklistStatus, Query(description="awaiting: triage order; reviewed: newest verdict first.")
    ] = "awaiting",
    offset: Offset = 0,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[WorklistItem]:
    """Studies of your department with an AI answer: awaiting review in triage order (AI-flagged first, then
    low-confidence, each longest-waiting first), or reviewed, with who read them and the verdict."""
    items, count = worklist(
        session=session, user=user, task=task, status=status, offset=offset, limit=limit, request_id=request_id
    )
    return Page[WorklistItem].of(items, count, offset=offset, limit=limit)


PNG: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "A see-through PNG at the film's size."}
}


@records_router.get(
    "/v1/predictions/{prediction_id}/heatmap.png",
    response_class=Response,
    responses=PNG,
    summary="A prediction's heat map (first view read)",
)
def read_heatmap(prediction_id: int, session: SessionDep, user: Reader, request_id: RequestId) -> Response:
    """Where the answer comes from on the first view the model read: a coloured, see-through map to lay over the
    film (Grad-CAM of the decided class, or of P(abnormal) for a negative decision)."""
    return _png(
        patients.prediction_heatmap(session=session, user=user, prediction_id=prediction_id, request_id=request_id)
    )


@records_router.get(
    "/v1/predictions/{prediction_id}/heatmap/{view}.png",
    response_class=Response,
    responses=PNG,
    summary="A prediction's heat map of one view",
)
def read_view_heatmap(
    prediction_id: int,
    view: Annotated[str, Path(max_length=20)],
    session: SessionDep,
    user: Reader,
    request_id: RequestId,
) -> Response:
    """The heat map of one view of the study (``pa``, ``lateral``...)."""
    entry = patients.prediction_heatmap(
        session=session, user=user, prediction_id=prediction_id, view=view, request_id=request_id
    )
    return _png(entry)


@records_router.get(
    "/v1/images/{image_id}/film.png",
    response_class=Response,
    responses=PNG,
    summary="A stored film, to display",
)
def read_film(
    image_id: int, session: SessionDep, user: Reader, store: StoreDep, settings: SettingsDep, request_id: RequestId
) -> Response:
    """A stored image of a study you see, as the 8-bit grayscale PNG the model read (DICOM windowed), at its own
    size: what the reading view draws, with the prediction's heat map over it."""
    image = patients.image_for_viewing(session=session, user=user, image_id=image_id, request_id=request_id)
    with store_errors("reading the image"):
        data = store.get_bytes(image.object_key)
    png = display_png(data, name=f"image {image_id}", limits=DecodeLimits.from_settings(settings))
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, no-store"})


def _png(entry: dict[str, Any]) -> Response:
    return Response(stored_heatmap_png(entry), media_type="image/png", headers={"Cache-Control": "private, no-store"})


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
