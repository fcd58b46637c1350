"""Radiologists' feedback over HTTP: record a verdict on a study, export the ledger as CSV; thin routes over
:mod:`care_companion.feedback.verdicts`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from care_companion.feedback.verdicts import export_ledger, give_feedback
from care_companion.imaging.deid import salt_for
from care_companion.records.schemas import FeedbackCreate, FeedbackPublic, Task
from care_companion.serving.deps import Radiologist, Reader, RequestId, SessionDep, SettingsDep, StoreDep
from care_companion.serving.schemas import AUTH_ERRORS, FeedbackRequest

feedback_router = APIRouter(tags=["feedback"], responses=AUTH_ERRORS)


@feedback_router.post("/v1/studies/{study_id}/feedback", response_model=FeedbackPublic, status_code=201)
def post_feedback(
    study_id: int,
    body: FeedbackRequest,
    session: SessionDep,
    user: Radiologist,
    settings: SettingsDep,
    store: StoreDep,
    request_id: RequestId,
) -> FeedbackPublic:
    """Confirm or correct a study's result; its image is copied to ``feedback/<task>/<LABEL>/`` for retraining."""
    feedback = give_feedback(
        session=session,
        store=store,
        user=user,
        study_id=study_id,
        feedback_in=FeedbackCreate(true_label=body.true_label, comment=body.comment),
        prediction_id=body.prediction_id,
        deid_salt=salt_for(settings.jwt_secret),
        request_id=request_id,
    )
    return FeedbackPublic.model_validate(feedback)


@feedback_router.get("/v1/feedback/export.csv", response_class=Response, responses={200: {"content": {"text/csv": {}}}})
def export_feedback(
    session: SessionDep,
    user: Reader,
    request_id: RequestId,
    task: Annotated[Task | None, Query(description="Only this task's studies.")] = None,
) -> Response:
    """The feedback ledger (predicted vs true label, radiologist, comment) as CSV, for the user's department."""
    text = export_ledger(session=session, user=user, task=task, request_id=request_id)
    return Response(text, media_type="text/csv", headers={"Content-Disposition": 'attachment; filename="feedback.csv"'})
