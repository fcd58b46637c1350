"""Every prediction is kept: with a study reference, the image (content-addressed in the object store) and the
image, prediction and audit rows, in one database transaction; without one, the prediction alone, anonymously,
that is linked to no patient (``CARE_LOG_ANONYMOUS_PREDICTIONS``). Every prediction needs a login either way.

Order of writes: the study is checked before any inference; after it, the image goes to the store first (its
key is its content hash, so a retry rewrites the same object), then the rows commit together. If the commit
fails, an object this request created is deleted again (unless another request of this process is storing
the same image), so neither orphan rows nor orphan objects remain; the client gets 503. A crash between the
two writes leaves an object no row names: the orphan sweep (:mod:`care_companion.reconcile`, at start-up and
every ``CARE_ORPHAN_SWEEP_SECONDS``) deletes it once it is older than ``CARE_ORPHAN_GRACE_SECONDS``.
Blocking database and store calls run in worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from care_companion.access.audit import audit
from care_companion.access.credentials import check_permission
from care_companion.access.patients import add_study, patient_for_mrn, study_for_upload, visible_patient
from care_companion.config import Settings
from care_companion.errors import RequestError, ServiceUnavailable
from care_companion.imaging.decode import dicom_study_uid, sniff_format
from care_companion.records.db import database_unavailable
from care_companion.records.models import User
from care_companion.records.repos import add_image, add_prediction
from care_companion.records.schemas import PatientBase, PredictionCreate, StudyCreate
from care_companion.security import Permission
from care_companion.serving.predict import Upload
from care_companion.serving.schemas import HEATMAP_PATH, PredictionResult
from care_companion.storage.base import ObjectStore, store_errors

log = logging.getLogger(__name__)

SUFFIX = {"png": ".png", "jpeg": ".jpg", "dicom": ".dcm"}


def image_key(task: str, data: bytes, fmt: str | None) -> tuple[str, str]:
    """The content hash of an upload (format ``fmt``) and its key ``images/<task>/<hh>/<sha256><suffix>``."""
    sha = hashlib.sha256(data).hexdigest()
    return sha, f"images/{task}/{sha[:2]}/{sha}{SUFFIX.get(fmt or '', '.img')}"


@dataclass
class Caller:
    """Who is predicting and for which study (None: the result is logged without a study), or for which patient
    a new study is opened with the result (``patient_id``)."""

    user_id: int
    username: str
    study_id: int | None
    patient_id: int | None = None
    patient: int | None = None  # whose films these are (the new study's or the existing study's patient)

    @property
    def keeps_images(self) -> bool:
        """Whether the images are stored (with a study, existing or new)."""
        return self.study_id is not None or self.patient_id is not None


@dataclass(frozen=True)
class _StoredImage:
    """An uploaded view as it is stored: content-addressed key, hash, format."""

    view: str
    key: str
    sha256: str
    format: str
    data: bytes
    dicom_study_uid: str | None = None

    @property
    def size(self) -> int:
        return len(self.data)

    @classmethod
    def of(cls, task: str, view: str, upload: Upload) -> _StoredImage:
        fmt = sniff_format(upload.data)
        sha, key = image_key(task, upload.data, fmt)
        study_uid = dicom_study_uid(upload.data) if fmt == "dicom" else None
        return cls(view=view, key=key, sha256=sha, format=fmt or "unknown", data=upload.data, dicom_study_uid=study_uid)


class RecordKeeper:
    """Authorises prediction requests against the records and keeps their results."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], store: ObjectStore) -> None:
        self.settings = settings
        self.sessions = sessions
        self.store = store
        self._leases: Counter[str] = Counter()  # image keys being stored by requests in flight
        self._lock = threading.Lock()
        # Called for each kept prediction with its films: (task, {view: upload}, version that answered, prediction
        # id). Shadow scoring hooks in here.
        self.on_kept: Callable[[str, dict[str, Upload], str | None, int], object] | None = None

    def _authorise(self, user: User, study_id: int | None, task: str, patient_id: int | None) -> Caller:
        try:
            with self.sessions() as session:
                if patient_id is not None:
                    check_permission(user, Permission.WRITE_RECORDS)
                    visible_patient(session, user, patient_id)
                    return Caller(user.id, user.username, None, patient_id, patient=patient_id)
                study = study_for_upload(session, user, study_id or 0, task)
                return Caller(user.id, user.username, study.id, patient=study.patient_id)
        except DBAPIError as exc:
            raise database_unavailable(exc) from exc

    async def authorise(self, user: User, study_id: int | None, task: str, *, patient_id: int | None = None) -> Caller:
        """Check the study (if any) against the uploader before any inference (404, 422 or 503); with
        ``patient_id`` instead, that the uploader may open a study for that patient (403, 404 or 503): the study
        is created only with the result, in the same transaction, so a refused or failed upload leaves none.

        Raises:
            RequestError: both ``study_id`` and ``patient_id`` (422).
        """
        if study_id is not None and patient_id is not None:
            raise RequestError("send study_id (an existing study) or patient_id (a new study), not both")
        if study_id is None and patient_id is None:
            return Caller(user.id, user.username, None)
        return await asyncio.to_thread(self._authorise, user, study_id, task, patient_id)

    async def patient_for(self, user: User, patient_in: PatientBase, *, request_id: str | None = None) -> int:
        """The id of the patient with ``patient_in.mrn`` the uploader sees, registered from ``patient_in`` when
        new (:func:`~care_companion.access.patients.patient_for_mrn`; 403, 404, 503)."""
        return await asyncio.to_thread(self._patient_for, user, patient_in, request_id)

    def _patient_for(self, user: User, patient_in: PatientBase, request_id: str | None) -> int:
        try:
            with self.sessions() as session, session.begin():
                check_permission(user, Permission.WRITE_RECORDS)
                patient, _ = patient_for_mrn(session=session, user=user, patient_in=patient_in, request_id=request_id)
                return patient.id
        except DBAPIError as exc:
            raise database_unavailable(exc) from exc

    @contextmanager
    def _lease(self, key: str | None) -> Iterator[None]:
        """Mark ``key`` as being stored by a request of this process for the duration of the block."""
        if key is None:
            yield
            return
        with self._lock:
            self._leases[key] += 1
        try:
            yield
        finally:
            with self._lock:
                self._leases[key] -= 1
                if not self._leases[key]:
                    del self._leases[key]

    def _put(self, key: str, data: bytes) -> bool:
        """Store an image; True when this request created the object."""
        with store_errors("storing the image"):
            existed = self.store.exists(key)
            # Written even when present: the same bytes, and a fresh timestamp that keeps the orphan sweep
            # (which spares recent objects) off an old orphan this request is about to reference.
            self.store.put_bytes(key, data)
        return not existed

    def _forget(self, key: str) -> None:
        """Delete an object this request created, unless another request of this process is storing it too
        (the same image uploaded twice at once); whatever is left is the orphan sweep's (``reconcile``)."""
        with self._lock:
            if self._leases[key] > 1:
                return
        try:
            self.store.delete(key)
        except Exception:
            log.exception("could not delete %s after a failed commit; the orphan sweep will", key)

    def _write_rows(
        self, caller: Caller, result: PredictionResult, images: list[_StoredImage]
    ) -> dict[str, int | None]:
        """The study (when opened with this result), image rows (one per view), prediction and audit rows, in one
        transaction; the prediction points at the first image."""
        with self.sessions() as session, session.begin():
            image_ids: list[int] = []
            if caller.patient_id is not None:  # a new study, opened with its result
                opener = session.get_one(User, caller.user_id)
                study_in = StudyCreate(patient_id=caller.patient_id, task=result.task)
                study = add_study(session=session, user=opener, study_in=study_in, request_id=result.request_id)
                caller = replace(caller, study_id=study.id)
            if caller.study_id is not None:
                image_ids = [
                    add_image(
                        session=session,
                        study_id=caller.study_id,
                        object_key=image.key,
                        sha256=image.sha256,
                        view=image.view,
                        content_type=image.format,
                        size_bytes=image.size,
                        dicom_study_uid=image.dicom_study_uid,
                    ).id
                    for image in images
                ]
            image_id = image_ids[0] if image_ids else None
            prediction = add_prediction(
                session=session,
                prediction_in=PredictionCreate(
                    study_id=caller.study_id,
                    image_id=image_id,
                    request_id=result.request_id[:64],
                    task=result.task,
                    model_name=result.model.name,
                    model_version=result.model.version,
                    probabilities=result.probabilities,
                    label=result.label,
                    threshold=result.decision.threshold,
                    positive=result.decision.positive,
                    confidence=result.confidence,
                    latency_ms=result.latency_ms,
                    heatmap=result.heatmap.model_dump(exclude={"url"}) if result.heatmap else None,
                    confidence_reasons=list(result.confidence_reasons),
                ),
            )
            if caller.study_id is not None:
                audit(
                    session,
                    session.get(User, caller.user_id),
                    "prediction.create",
                    "study",
                    caller.study_id,
                    request_id=result.request_id,
                    prediction_id=prediction.id,
                    image_ids=image_ids,
                )
            return {"study_id": caller.study_id, "image_id": image_id, "prediction_id": prediction.id}

    def _keep(
        self, caller: Caller, uploads: list[tuple[str, Upload]], result: PredictionResult
    ) -> dict[str, int | None]:
        if not caller.keeps_images and not self.settings.log_anonymous_predictions:
            return {}
        images = [_StoredImage.of(result.task, view, upload) for view, upload in uploads] if caller.keeps_images else []
        with contextlib.ExitStack() as leases:
            created: list[str] = []
            try:
                for image in images:
                    leases.enter_context(self._lease(image.key))
                    if self._put(image.key, image.data):
                        created.append(image.key)
                return self._write_rows(caller, result, images)
            except Exception as exc:
                for key in created:
                    self._forget(key)
                if isinstance(exc, DBAPIError):
                    raise database_unavailable(exc) from exc
                raise

    async def keep(
        self, caller: Caller, uploads: list[tuple[str, Upload]], result: PredictionResult
    ) -> PredictionResult:
        """Keep the result (and, for a study, its images: (view, upload) pairs); returns it with the record ids
        filled in (``image_id``: the first image).

        For a study, a failure is the client's 503 (nothing half-written). An anonymous result is still
        served when only its log entry fails: the log is a convenience, the answer is the service.
        """
        try:
            ids = await asyncio.to_thread(self._keep, caller, uploads, result)
        except ServiceUnavailable as exc:
            if caller.keeps_images:
                raise
            log.warning("anonymous prediction %s served but not logged: %s", result.request_id, exc.detail)
            return result
        if not ids:
            return result
        prediction_id = ids.get("prediction_id")
        if self.on_kept is not None and prediction_id is not None:
            self.on_kept(result.task, dict(uploads), result.model.version, prediction_id)
        if result.heatmap is not None and ids.get("prediction_id") is not None and ids.get("study_id") is not None:
            url = HEATMAP_PATH.format(prediction_id=ids["prediction_id"])
            ids = {**ids, "heatmap": result.heatmap.model_copy(update={"url": url})}  # type: ignore[dict-item]
        return result.model_copy(update=ids)
