"""Radiologists' verdicts: record one (copying the study's image to ``feedback/<task>/<LABEL>/``) and export
the ledger as CSV (the proposal's feedback file).

The copy is what a retraining data set is built from, so a DICOM image is de-identified (PS3.15 basic
profile) on the way; other formats carry no patient metadata.
"""

from __future__ import annotations

import csv
import io
from pathlib import PurePosixPath

from sqlalchemy import select
from sqlalchemy.orm import Session

from care_companion.errors import RequestError
from care_companion.imaging.decode import sniff_format
from care_companion.imaging.deid import deidentify_dicom
from care_companion.records.models import Feedback, Prediction, Study, User
from care_companion.records.repos import add_feedback, get_study, list_images
from care_companion.records.schemas import FeedbackCreate
from care_companion.storage.base import ObjectStore, store_errors
from care_companion.tasks import get_task

CSV_COLUMNS = (
    "feedback_id",
    "created_at",
    "study_id",
    "patient_id",
    "task",
    "department",
    "model_name",
    "model_version",
    "predicted_label",
    "true_label",
    "agrees",
    "radiologist",
    "comment",
    "object_key",
)


def feedback_key(task: str, label: str, sha256: str, object_key: str) -> str:
    """Where a labelled image is copied: ``feedback/<task>/<LABEL>/<sha256><suffix>``."""
    suffix = PurePosixPath(object_key).suffix.lower()
    return f"feedback/{task}/{label.upper()}/{sha256}{suffix}"


def record_feedback(
    *,
    session: Session,
    store: ObjectStore,
    study_id: int,
    radiologist: User,
    feedback_in: FeedbackCreate,
    prediction_id: int | None = None,
    deid_salt: str,
) -> Feedback:
    """Record a verdict on a study and copy its image(s) under ``feedback/<task>/<TRUE_LABEL>/``.

    Args:
        session: the request's transaction (the caller commits; on any error nothing is recorded).
        store: the object store holding the study's images.
        study_id: the study judged.
        radiologist: who judged it.
        feedback_in: the true label (one of the task's classes) and a comment.
        prediction_id: the prediction judged (default: the study's latest).
        deid_salt: secret salt for the UIDs of de-identified DICOM copies.

    Raises:
        RequestError: the label is not a class of the study's task (422).
        ServiceUnavailable: the object store failed (503, ``store_unavailable``; nothing is recorded).
    """
    study = get_study(session=session, study_id=study_id)
    classes = get_task(study.task).classes
    label = feedback_in.true_label.strip().lower()
    if label not in classes:
        raise RequestError(
            f"true_label {feedback_in.true_label!r} is not a {study.task} class; use one of: {', '.join(classes)}",
            code="invalid_label",
        )
    first_key: str | None = None
    for image in list_images(session=session, study_id=study.id):
        key = feedback_key(study.task, label, image.sha256, image.object_key)
        with store_errors(f"copying study {study.id}'s image"):
            # Written even when present (the same de-identified bytes): a fresh timestamp keeps the orphan
            # sweep, which spares recent objects, off a copy this verdict is about to reference.
            data = store.get_bytes(image.object_key)
            if sniff_format(data) == "dicom":
                data = deidentify_dicom(data, salt=deid_salt, name=image.object_key)
            store.put_bytes(key, data)
        first_key = first_key or key
    verdict = feedback_in.model_copy(update={"true_label": label})
    return add_feedback(
        session=session,
        study_id=study.id,
        radiologist_id=radiologist.id,
        feedback_in=verdict,
        prediction_id=prediction_id,
        object_key=first_key,
    )


def export_csv(*, session: Session, department: str | None = None, task: str | None = None) -> str:
    """The feedback ledger as CSV, oldest first; ``department``/``task`` narrow it. Patient ids, never names."""
    stmt = (
        select(Feedback, Study, User, Prediction)
        .join(Study, Feedback.study_id == Study.id)
        .join(User, Feedback.radiologist_id == User.id)
        .outerjoin(Prediction, Feedback.prediction_id == Prediction.id)
        .order_by(Feedback.id)
    )
    if department is not None:
        stmt = stmt.where(Study.department == department)
    if task is not None:
        stmt = stmt.where(Study.task == task)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for feedback, study, user, prediction in session.execute(stmt):
        writer.writerow(
            [
                feedback.id,
                feedback.created_at.isoformat(),
                study.id,
                study.patient_id,
                study.task,
                study.department,
                prediction.model_name if prediction else "",
                (prediction.model_version or "") if prediction else "",
                feedback.predicted_label or "",
                feedback.true_label,
                str(feedback.agrees).lower(),
                user.username,
                feedback.comment,
                feedback.object_key or "",
            ]
        )
    return out.getvalue()
