"""Patients and studies as a signed-in user may see and change them, each action audited.

Technicians and radiologists work in their own department (another department's record is "not found"),
admins in all (:mod:`~care_companion.access.departments`). Every read or write appends an audit row in the
caller's transaction with ids and counts only, never names, MRNs or search text. Permissions (who may read or
write at all) are checked by the caller, before these functions run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from care_companion.access.audit import audit, ids
from care_companion.access.departments import check_assignable, check_department, visible_department
from care_companion.errors import RequestError
from care_companion.records.models import Feedback, Image, Patient, Prediction, Study, User
from care_companion.records.repos import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    NotFound,
    create_patient,
    create_study,
    get_patient,
    get_patient_by_mrn,
    get_prediction,
    get_study,
    images_of_dicom_study,
    list_feedback,
    list_images,
    list_predictions,
    list_studies,
    search_patients,
    update_patient,
)
from care_companion.records.schemas import PatientBase, PatientCreate, PatientUpdate, StudyCreate

NOT_NULL_FIELDS = ("mrn", "name", "sex", "medical_history", "department")

_Row = TypeVar("_Row", Prediction, Feedback)


# -- the rules -----------------------------------------------------------------------------------------------


def visible_patient(session: Session, user: User, patient_id: int) -> Patient:
    """The patient, if it exists and is in a department ``user`` sees; :class:`NotFound` otherwise."""
    patient = get_patient(session=session, patient_id=patient_id)
    check_department(user, patient.department, what=f"patient {patient_id}")
    return patient


def visible_study(session: Session, user: User, study_id: int, *, what: str | None = None) -> Study:
    """The study, if it exists and is in a department ``user`` sees; :class:`NotFound` ("``what`` not found",
    default "study <id> not found") otherwise."""
    study = get_study(session=session, study_id=study_id)
    check_department(user, study.department, what=what or f"study {study_id}")
    return study


def study_for_upload(session: Session, user: User, study_id: int, task: str) -> Study:
    """The study an upload of ``task`` images by ``user`` is stored with: :class:`NotFound` when it is missing or
    of another department, :class:`RequestError` (422 ``wrong_task``) when it is a study of another task."""
    study = visible_study(session, user, study_id, what="study")
    if study.task != task:
        raise RequestError(f"study {study_id} is a {study.task} study, not {task}", code="wrong_task")
    return study


def new_patient_department(user: User, requested: str) -> str:
    """The department a new patient goes to: the one asked for (own only, unless admin), else the user's.

    Raises:
        RequestError: nothing asked for and the user has no department (``department_required``).
        Forbidden: a non-admin asked for another department.
    """
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


# -- patients ------------------------------------------------------------------------------------------------


def add_patient(*, session: Session, user: User, patient_in: PatientBase, request_id: str | None = None) -> Patient:
    """Add a patient; a blank ``patient_in.department`` means the user's own (see :func:`new_patient_department`).

    Raises:
        Conflict: the MRN is taken.
    """
    department = new_patient_department(user, patient_in.department)
    patient = create_patient(
        session=session, patient_in=PatientCreate.model_validate({**patient_in.model_dump(), "department": department})
    )
    audit(session, user, "patient.create", "patient", patient.id, request_id=request_id, department=department)
    return patient


def patient_for_mrn(
    *, session: Session, user: User, patient_in: PatientBase, request_id: str | None = None
) -> tuple[Patient, bool]:
    """The patient with ``patient_in.mrn`` when ``user`` sees them, else a new one from ``patient_in`` in the
    user's department (studies arriving over DICOM name their patient by MRN); and whether it is new.

    Raises:
        NotFound: the MRN belongs to a patient of another department.
    """
    existing = get_patient_by_mrn(session=session, mrn=patient_in.mrn)
    if existing is not None:
        check_department(user, existing.department, what=f"patient with MRN {patient_in.mrn}")
        audit(session, user, "patient.read", "patient", existing.id, request_id=request_id)
        return existing, False
    return add_patient(session=session, user=user, patient_in=patient_in, request_id=request_id), True


def find_patients(
    *,
    session: Session,
    user: User,
    query: str | None = None,
    offset: int = 0,
    limit: int = DEFAULT_LIMIT,
    request_id: str | None = None,
) -> tuple[list[Patient], int]:
    """Patients of the user's department (admins: all) whose MRN starts with ``query`` or whose name contains
    it; the audit row says whether a query was given, never what it was."""
    items, count = search_patients(
        session=session, query=query, department=visible_department(user), offset=offset, limit=limit
    )
    audit(
        session,
        user,
        "patient.search",
        "patient",
        request_id=request_id,
        query_given=bool(query and query.strip()),
        count=count,
        offset=offset,
        ids=ids(items),
    )
    return items, count


def read_patient(*, session: Session, user: User, patient_id: int, request_id: str | None = None) -> Patient:
    """A patient of the user's department (admins: any); :class:`NotFound` otherwise."""
    patient = visible_patient(session, user, patient_id)
    audit(session, user, "patient.read", "patient", patient.id, request_id=request_id)
    return patient


def change_patient(
    *, session: Session, user: User, patient_id: int, patient_in: PatientUpdate, request_id: str | None = None
) -> Patient:
    """Change the fields set in ``patient_in`` (:func:`checked_update`); a patient moved to another department
    takes their studies along. The audit row names the fields changed, not their values."""
    visible_patient(session, user, patient_id)
    checked = checked_update(user, patient_in)
    patient = update_patient(session=session, patient_id=patient_id, patient_in=checked)
    audit(
        session,
        user,
        "patient.update",
        "patient",
        patient.id,
        request_id=request_id,
        fields=sorted(checked.model_fields_set),
    )
    return patient


# -- studies -------------------------------------------------------------------------------------------------


def add_study(*, session: Session, user: User, study_in: StudyCreate, request_id: str | None = None) -> Study:
    """Add a study of a patient the user can see; it takes the patient's department."""
    visible_patient(session, user, study_in.patient_id)
    study = create_study(session=session, study_in=study_in, created_by_id=user.id)
    audit(
        session,
        user,
        "study.create",
        "study",
        study.id,
        request_id=request_id,
        patient_id=study.patient_id,
        task=study.task,
    )
    return study


def find_studies(
    *,
    session: Session,
    user: User,
    patient_id: int | None = None,
    task: str | None = None,
    offset: int = 0,
    limit: int = DEFAULT_LIMIT,
    request_id: str | None = None,
) -> tuple[list[Study], int]:
    """Studies of the user's department (admins: all), newest first, optionally of one (visible) patient or task."""
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
        "study.list",
        "study",
        request_id=request_id,
        patient_id=patient_id,
        task=task,
        count=count,
        offset=offset,
        ids=ids(items),
    )
    return items, count


def read_study(*, session: Session, user: User, study_id: int, request_id: str | None = None) -> Study:
    """A study of the user's department (admins: any); :class:`NotFound` otherwise."""
    study = visible_study(session, user, study_id)
    audit(session, user, "study.read", "study", study.id, request_id=request_id, patient_id=study.patient_id)
    return study


def study_images(*, session: Session, user: User, study_id: int, request_id: str | None = None) -> list[Image]:
    """A visible study's images in upload order."""
    study = visible_study(session, user, study_id)
    images = list_images(session=session, study_id=study.id)
    audit(
        session,
        user,
        "study.images",
        "study",
        study.id,
        request_id=request_id,
        patient_id=study.patient_id,
        ids=ids(images),
    )
    return images


def _study_rows(
    session: Session,
    user: User,
    study_id: int,
    action: str,
    lister: Callable[..., tuple[list[_Row], int]],
    *,
    offset: int,
    limit: int,
    request_id: str | None,
) -> tuple[list[_Row], int]:
    """A page of a visible study's rows from ``lister`` (called with ``session``, ``study_id``, ``offset`` and
    ``limit``), audited as ``action`` with the count and the ids listed."""
    study = visible_study(session, user, study_id)
    items, count = lister(session=session, study_id=study.id, offset=offset, limit=limit)
    audit(
        session,
        user,
        action,
        "study",
        study.id,
        request_id=request_id,
        patient_id=study.patient_id,
        count=count,
        ids=ids(items),
    )
    return items, count


def study_predictions(
    *,
    session: Session,
    user: User,
    study_id: int,
    offset: int = 0,
    limit: int = DEFAULT_LIMIT,
    request_id: str | None = None,
) -> tuple[list[Prediction], int]:
    """The model's answers for a visible study, newest first."""
    return _study_rows(
        session,
        user,
        study_id,
        "study.predictions",
        list_predictions,
        offset=offset,
        limit=limit,
        request_id=request_id,
    )


def study_feedback(
    *,
    session: Session,
    user: User,
    study_id: int,
    offset: int = 0,
    limit: int = DEFAULT_LIMIT,
    request_id: str | None = None,
) -> tuple[list[Feedback], int]:
    """Radiologists' verdicts on a visible study, oldest first."""
    return _study_rows(
        session, user, study_id, "study.feedback", list_feedback, offset=offset, limit=limit, request_id=request_id
    )


def prediction_heatmap(
    *, session: Session, user: User, prediction_id: int, view: str | None = None, request_id: str | None = None
) -> dict[str, Any]:
    """One view's heat map (``grid``, ``width``, ``height``; the first view read when ``view`` is None) of a
    prediction of a study ``user`` sees, audited as ``prediction.heatmap``.

    Raises:
        NotFound: no such prediction, its study is in another department, it was kept without a study (anonymous
            predictions belong to no department), or it has no map of that view.
    """
    prediction = get_prediction(session=session, prediction_id=prediction_id)
    what = f"prediction {prediction_id}"
    if prediction.study_id is None:
        raise NotFound(f"{what} not found")
    study = visible_study(session, user, prediction.study_id, what=what)
    views = (prediction.heatmap or {}).get("views") or {}
    if not views:
        raise NotFound(f"{what} has no heat map (its model was exported without class maps)")
    chosen = view or next(iter(views))
    if chosen not in views:
        raise NotFound(f"{what} has no heat map of view {chosen!r}; it has {', '.join(views)}")
    audit(session, user, "prediction.heatmap", "study", study.id, request_id=request_id, prediction_id=prediction.id)
    return dict(views[chosen])


def prediction_record(
    *, session: Session, user: User, prediction_id: int, request_id: str | None = None
) -> tuple[Prediction, Study, list[Feedback]]:
    """A stored prediction of a study ``user`` sees, with the study and the radiologists' verdicts on that
    prediction (oldest first), to report to a hospital system; audited as ``prediction.report``.

    Raises:
        NotFound: no such prediction, its study is in another department, or it was kept without a study.
    """
    prediction = get_prediction(session=session, prediction_id=prediction_id)
    what = f"prediction {prediction_id}"
    if prediction.study_id is None:
        raise NotFound(f"{what} not found")
    study = visible_study(session, user, prediction.study_id, what=what)
    rows, _ = list_feedback(session=session, study_id=study.id, limit=MAX_LIMIT)
    verdicts = [f for f in rows if f.prediction_id in (prediction.id, None)]  # None: a verdict on the whole study
    audit(session, user, "prediction.report", "study", study.id, request_id=request_id, prediction_id=prediction.id)
    return prediction, study, verdicts


def image_for_viewing(*, session: Session, user: User, image_id: int, request_id: str | None = None) -> Image:
    """A stored image of a study ``user`` sees, to display (audited as ``image.view``).

    Raises:
        NotFound: no such image, or its study is in another department.
    """
    image = session.get(Image, image_id)
    what = f"image {image_id}"
    if image is None:
        raise NotFound(f"{what} not found")
    study = visible_study(session, user, image.study_id, what=what)
    audit(session, user, "image.view", "study", study.id, request_id=request_id, image_id=image.id, view=image.view)
    return image


@dataclass(frozen=True)
class DicomStudyResult:
    """A stored prediction on films uploaded as DICOM, with what its reports are built from: the study, the
    radiologists' verdicts on it (oldest first) and the film of each view it read."""

    prediction: Prediction
    study: Study
    verdicts: list[Feedback]
    films: dict[str, Image]


def dicom_study_results(
    *, session: Session, user: User, study_uid: str, request_id: str | None = None
) -> list[DicomStudyResult]:
    """The results of the DICOM study ``study_uid`` (StudyInstanceUID) in the records studies ``user`` sees, oldest
    first; each one's film per view is the latest of that view uploaded with or before it. Audited as
    ``prediction.report`` per result.

    Raises:
        NotFound: no film of that study was uploaded, or none in a study ``user`` sees.
    """
    by_study: dict[int, list[Image]] = {}
    for image in images_of_dicom_study(session=session, study_uid=study_uid):
        by_study.setdefault(image.study_id, []).append(image)
    out: list[DicomStudyResult] = []
    for study_id, images in by_study.items():
        try:
            study = visible_study(session, user, study_id, what=f"DICOM study {study_uid}")
        except NotFound:
            continue
        predictions, _ = list_predictions(session=session, study_id=study.id, limit=MAX_LIMIT)
        rows, _ = list_feedback(session=session, study_id=study.id, limit=MAX_LIMIT)
        for prediction in sorted(predictions, key=lambda p: p.id):
            films: dict[str, Image] = {}
            for image in images:  # upload order: a later film of a view replaces an earlier one
                if image.created_at <= prediction.created_at or image.id == prediction.image_id:
                    films[image.view] = image
            if not films:
                continue
            verdicts = [f for f in rows if f.prediction_id in (prediction.id, None)]
            out.append(DicomStudyResult(prediction, study, verdicts, films))
            audit(
                session,
                user,
                "prediction.report",
                "study",
                study.id,
                request_id=request_id,
                prediction_id=prediction.id,
            )
    if not out:
        raise NotFound(f"DICOM study {study_uid} not found")
    return out
