"""Radiologists' verdicts as a signed-in user gives and reads them: department-scoped and audited.

A verdict is recorded (and its images copied for retraining) only on a study the radiologist's department
holds; the ledger export holds the user's department's verdicts only (admins: all). Both append an audit row
in the caller's transaction (ids and counts, never the comment).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from care_companion.access.audit import audit
from care_companion.access.departments import visible_department
from care_companion.access.patients import visible_study
from care_companion.feedback.ledger import export_csv, record_feedback
from care_companion.records.models import Feedback, User
from care_companion.records.schemas import FeedbackCreate
from care_companion.storage.base import ObjectStore


def give_feedback(
    *,
    session: Session,
    store: ObjectStore,
    user: User,
    study_id: int,
    feedback_in: FeedbackCreate,
    prediction_id: int | None = None,
    deid_salt: str,
    request_id: str | None = None,
) -> Feedback:
    """Record ``user``'s verdict on a study of their department (:func:`.ledger.record_feedback`).

    Raises:
        NotFound: no such study, or one of another department ("study not found" either way).
        RequestError: the label is not a class of the study's task.
        ServiceUnavailable: the object store failed.
    """
    study = visible_study(session, user, study_id, what="study")
    feedback = record_feedback(
        session=session,
        store=store,
        study_id=study.id,
        radiologist=user,
        feedback_in=feedback_in,
        prediction_id=prediction_id,
        deid_salt=deid_salt,
    )
    audit(
        session,
        user,
        "feedback.create",
        "study",
        study.id,
        request_id=request_id,
        feedback_id=feedback.id,
        agrees=feedback.agrees,
    )
    return feedback


def export_ledger(*, session: Session, user: User, task: str | None = None, request_id: str | None = None) -> str:
    """The feedback ledger as CSV for ``user``'s department (admins: all), optionally of one task."""
    text = export_csv(session=session, department=visible_department(user), task=task)
    audit(session, user, "feedback.export", "feedback", None, request_id=request_id, rows=text.count("\n") - 1)
    return text
