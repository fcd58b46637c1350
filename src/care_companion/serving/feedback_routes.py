"""Radiologists' feedback over HTTP: record a verdict on a study, export the ledger as CSV."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from care_companion.feedback.ledger import export_csv, record_feedback
from care_companion.imaging.deid import salt_for
from care_companion.records.models import User
from care_companion.records.repos import get_study
from care_companion.records.schemas import FeedbackCreate, FeedbackPublic, Task
from care_companion.security import Permission
from care_companion.serving.auth import AUTH_ERRORS, SessionDep, audit, check_department, require, visible_department

Radiologist = Annotated[User, Depends(require(Permission.FEEDBACK))]
Reader = Annotated[User, Depends(require(Permission.READ_RECORDS))]

feedback_router = APIRouter(tags=["feedback"], responses=AUTH_ERRORS)


class FeedbackRequest(FeedbackCreate):
    """A verdict: the true label (a class of the study's task), a comment, optionally the prediction judged."""

    prediction_id: int | None = None


@feedback_router.post("/v1/studies/{study_id}/feedback", response_model=FeedbackPublic, status_code=201)
def post_feedback(
    study_id: int, body: FeedbackRequest, request: Request, session: SessionDep, user: Radiologist
) -> FeedbackPublic:
    """Confirm or correct a study's result; its image is copied to ``feedback/<task>/<LABEL>/`` for retraining."""
    study = get_study(session=session, study_id=study_id)
    check_department(user, study.department, what="study")
    settings = request.app.state.settings
    feedback = record_feedback(
        session=session,
        store=request.app.state.store,
        study_id=study.id,
        radiologist=user,
        feedback_in=FeedbackCreate(true_label=body.true_label, comment=body.comment),
        prediction_id=body.prediction_id,
        deid_salt=salt_for(settings.jwt_secret),
    )
    audit(session, user, request, "feedback.create", "study", study.id, feedback_id=feedback.id, agrees=feedback.agrees)
    return FeedbackPublic.model_validate(feedback)


@feedback_router.get("/v1/feedback/export.csv", response_class=Response, responses={200: {"content": {"text/csv": {}}}})
def export_feedback(
    request: Request,
    session: SessionDep,
    user: Reader,
    task: Annotated[Task | None, Query(description="Only this task's studies.")] = None,
) -> Response:
    """The feedback ledger (predicted vs true label, radiologist, comment) as CSV, for the user's department."""
    department = visible_department(user)
    text = export_csv(session=session, department=department, task=task)
    audit(session, user, request, "feedback.export", "feedback", None, rows=text.count("\n") - 1)
    return Response(text, media_type="text/csv", headers={"Content-Disposition": 'attachment; filename="feedback.csv"'})
