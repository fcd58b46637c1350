"""Every prediction is kept: with a study reference, the image (content-addressed in the object store) and the
image, prediction and audit rows, in one database transaction; without one, the prediction alone, anonymously,
that is linked to no patient (``CARE_LOG_ANONYMOUS_PREDICTIONS``). Every prediction needs a login either way.

Order of writes: the study is checked before any inference; after it, the image goes to the store first (its
key is its content hash, so a retry rewrites the same object), then the rows commit together. If the commit
fails, an object this request created is deleted again, so neither orphan rows nor orphan objects remain;
the client gets 503. Blocking database and store calls run in worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from care_companion.config import Settings
from care_companion.errors import RequestError, ServiceUnavailable
from care_companion.imaging.decode import sniff_format
from care_companion.records.db import database_unavailable
from care_companion.records.models import User
from care_companion.records.repos import add_image, add_prediction, get_study, write_audit
from care_companion.records.schemas import PredictionCreate
from care_companion.serving.auth import check_department
from care_companion.serving.predict import Upload
from care_companion.serving.schemas import PredictionResult
from care_companion.storage.base import ObjectStore, store_errors

log = logging.getLogger(__name__)

SUFFIX = {"png": ".png", "jpeg": ".jpg", "dicom": ".dcm"}


def image_key(task: str, data: bytes, fmt: str | None) -> tuple[str, str]:
    """The content hash of an upload (format ``fmt``) and its key ``images/<task>/<hh>/<sha256><suffix>``."""
    sha = hashlib.sha256(data).hexdigest()
    return sha, f"images/{task}/{sha[:2]}/{sha}{SUFFIX.get(fmt or '', '.img')}"


@dataclass
class Caller:
    """Who is predicting and for which study (None: the result is logged without a study)."""

    user_id: int
    username: str
    study_id: int | None


class RecordKeeper:
    """Authorises prediction requests against the records and keeps their results."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], store: ObjectStore) -> None:
        self.settings = settings
        self.sessions = sessions
        self.store = store

    def _authorise(self, user: User, study_id: int, task: str) -> Caller:
        try:
            with self.sessions() as session:
                study = get_study(session=session, study_id=study_id)
                check_department(user, study.department, what="study")
                if study.task != task:
                    raise RequestError(f"study {study_id} is a {study.task} study, not {task}", code="wrong_task")
                return Caller(user.id, user.username, study.id)
        except DBAPIError as exc:
            raise database_unavailable(exc) from exc

    async def authorise(self, user: User, study_id: int | None, task: str) -> Caller:
        """Check the study (if any) against the uploader before any inference (404, 422 or 503)."""
        if study_id is None:
            return Caller(user.id, user.username, None)
        return await asyncio.to_thread(self._authorise, user, study_id, task)

    def _keep(self, caller: Caller, upload: Upload, result: PredictionResult, view: str) -> dict[str, int | None]:
        if caller.study_id is None and not self.settings.log_anonymous_predictions:
            return {}
        image_id = None
        created_key = None
        fmt = sniff_format(upload.data)
        if caller.study_id is not None:
            sha, key = image_key(result.task, upload.data, fmt)
            with store_errors("storing the image"):
                if not self.store.exists(key):
                    self.store.put_bytes(key, upload.data)
                    created_key = key
        try:
            with self.sessions() as session, session.begin():
                if caller.study_id is not None:
                    image = add_image(
                        session=session,
                        study_id=caller.study_id,
                        object_key=key,
                        sha256=sha,
                        view=view,
                        content_type=fmt or "unknown",
                        size_bytes=len(upload.data),
                    )
                    image_id = image.id
                prediction = add_prediction(
                    session=session,
                    prediction_in=PredictionCreate(
                        study_id=caller.study_id,
                        image_id=image_id,
                        request_id=result.request_id[:64],
                        task=result.task,  # type: ignore[arg-type]
                        model_name=result.model.name,
                        model_version=result.model.version,
                        probabilities=result.probabilities,
                        label=result.label,
                        threshold=result.decision.threshold,
                        positive=result.decision.positive,
                        confidence=result.confidence,
                        latency_ms=result.latency_ms,
                    ),
                )
                if caller.study_id is not None:
                    user = session.get(User, caller.user_id)
                    write_audit(
                        session=session,
                        user=user,
                        action="prediction.create",
                        resource_type="study",
                        resource_id=caller.study_id,
                        request_id=result.request_id,
                        detail={"prediction_id": prediction.id, "image_id": image_id},
                    )
                ids = {"study_id": caller.study_id, "image_id": image_id, "prediction_id": prediction.id}
        except Exception as exc:
            if created_key is not None:
                self._forget(created_key)
            if isinstance(exc, DBAPIError):
                raise database_unavailable(exc) from exc
            raise
        return ids

    def _forget(self, key: str) -> None:
        try:
            self.store.delete(key)
        except Exception:  # the reconciliation of orphans (issue 4, faults) catches what this misses
            log.exception("could not delete %s after a failed commit", key)

    async def keep(self, caller: Caller, upload: Upload, result: PredictionResult, view: str) -> PredictionResult:
        """Keep the result (and, for a study, its image); returns it with the record ids filled in.

        For a study, a failure is the client's 503 (nothing half-written). An anonymous result is still
        served when only its log entry fails: the log is a convenience, the answer is the service.
        """
        try:
            ids = await asyncio.to_thread(self._keep, caller, upload, result, view)
        except ServiceUnavailable as exc:
            if caller.study_id is not None:
                raise
            log.warning("anonymous prediction %s served but not logged: %s", result.request_id, exc.detail)
            return result
        return result.model_copy(update=ids) if ids else result
