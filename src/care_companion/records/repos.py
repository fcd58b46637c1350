"""Repository functions over the records tables.

Every function is keyword-only and takes the caller's :class:`~sqlalchemy.orm.Session`; it flushes (so ids are
set and constraints checked) but never commits: the caller owns the transaction. List functions return
``(items, count)`` where ``count`` is the number of matching rows before ``offset``/``limit`` (capped at
:data:`MAX_LIMIT`). Missing rows raise :class:`NotFound`; unique-key clashes (MRN, username, API key prefix)
raise :class:`Conflict` after rolling back only their own savepoint, so the session stays usable.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, case, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, defer

from care_companion.errors import DataError
from care_companion.records.models import (
    LATENCY_BUCKETS_MS,
    ApiKey,
    AuditLog,
    Base,
    DriftCheck,
    Feedback,
    FhirPush,
    Image,
    Patient,
    Prediction,
    ServingStat,
    ShadowPrediction,
    Study,
    TaskRow,
    User,
    utcnow,
)
from care_companion.records.schemas import (
    FeedbackCreate,
    PatientCreate,
    PatientUpdate,
    PredictionCreate,
    StudyCreate,
    UserCreate,
    UserUpdate,
)
from care_companion.tasks import TaskSpec, all_tasks, get_task

MAX_LIMIT = 500
DEFAULT_LIMIT = 50

ModelT = TypeVar("ModelT", bound=Base)


class NotFound(DataError):
    """A record asked for by id or key does not exist."""

    code = "not_found"


class Conflict(DataError):
    """A record clashes with an existing one on a unique key (MRN, username, API key prefix)."""

    code = "conflict"


# -- helpers -------------------------------------------------------------------------------------------------


def _window(offset: int, limit: int) -> tuple[int, int]:
    return max(offset, 0), min(max(limit, 0), MAX_LIMIT)


def _page(session: Session, stmt: Select[ModelT], *, offset: int, limit: int) -> tuple[list[ModelT], int]:
    offset, limit = _window(offset, limit)
    count = session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery())) or 0
    items = list(session.scalars(stmt.offset(offset).limit(limit))) if limit else []
    return items, count


def _get(session: Session, model: type[ModelT], ident: int, what: str) -> ModelT:
    row = session.get(model, ident)
    if row is None:
        raise NotFound(f"{what} {ident} not found")
    return row


def _insert_unique(session: Session, row: ModelT, conflict: Callable[[], str]) -> ModelT:
    """Add and flush ``row`` in a savepoint; a unique-key clash becomes :class:`Conflict`."""
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError as exc:
        raise Conflict(conflict()) from exc
    return row


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# -- patients ------------------------------------------------------------------------------------------------


def create_patient(*, session: Session, patient_in: PatientCreate) -> Patient:
    """Add a patient; raises :class:`Conflict` when the MRN is taken."""
    patient = Patient(**patient_in.model_dump())
    return _insert_unique(session, patient, lambda: f"a patient with MRN {patient_in.mrn!r} already exists")


def get_patient(*, session: Session, patient_id: int) -> Patient:
    """The patient with this id; raises :class:`NotFound`."""
    return _get(session, Patient, patient_id, "patient")


def get_patient_by_mrn(*, session: Session, mrn: str) -> Patient | None:
    """The patient with this MRN, or None."""
    return session.scalar(select(Patient).where(Patient.mrn == mrn))


def update_patient(*, session: Session, patient_id: int, patient_in: PatientUpdate) -> Patient:
    """Change the fields set in ``patient_in``; raises :class:`NotFound`, or :class:`Conflict` on a taken MRN.

    A patient moved to another department (a transfer) takes their studies along, so the new department's
    staff see the history and the old one's no longer do.
    """
    patient = get_patient(session=session, patient_id=patient_id)
    changes = patient_in.model_dump(exclude_unset=True)
    try:
        with session.begin_nested():
            for field, value in changes.items():
                setattr(patient, field, value)
            if changes.get("department") is not None:
                session.execute(
                    update(Study).where(Study.patient_id == patient.id).values(department=changes["department"])
                )
            session.flush()
    except IntegrityError as exc:
        session.refresh(patient)
        raise Conflict(f"a patient with MRN {changes.get('mrn')!r} already exists") from exc
    return patient


def search_patients(
    *,
    session: Session,
    query: str | None = None,
    department: str | None = None,
    offset: int = 0,
    limit: int = DEFAULT_LIMIT,
) -> tuple[list[Patient], int]:
    """Patients whose MRN starts with ``query`` or whose name contains it (case-insensitive), by name."""
    stmt = select(Patient)
    if query and query.strip():
        pattern = _escape_like(query.strip().lower())
        stmt = stmt.where(
            or_(
                func.lower(Patient.mrn).like(f"{pattern}%", escape="\\"),
                func.lower(Patient.name).like(f"%{pattern}%", escape="\\"),
            )
        )
    if department is not None:
        stmt = stmt.where(Patient.department == department)
    return _page(session, stmt.order_by(Patient.name, Patient.id), offset=offset, limit=limit)


# -- users and API keys --------------------------------------------------------------------------------------


def create_user(*, session: Session, user_in: UserCreate, password_hash: str | None) -> User:
    """Add a user with an already hashed password (``user_in.password`` is ignored); :class:`Conflict` on a taken
    username."""
    user = User(**user_in.model_dump(exclude={"password"}), password_hash=password_hash, is_active=True)
    return _insert_unique(session, user, lambda: f"a user named {user_in.username!r} already exists")


def get_user(*, session: Session, user_id: int) -> User:
    """The user with this id; raises :class:`NotFound`."""
    return _get(session, User, user_id, "user")


def get_user_by_username(*, session: Session, username: str) -> User | None:
    """The user with this username, or None (sign-in treats both the same)."""
    return session.scalar(select(User).where(User.username == username))


def list_users(
    *,
    session: Session,
    role: str | None = None,
    department: str | None = None,
    offset: int = 0,
    limit: int = DEFAULT_LIMIT,
) -> tuple[list[User], int]:
    """Users, by username, optionally of one role or department."""
    stmt = select(User)
    if role is not None:
        stmt = stmt.where(User.role == role)
    if department is not None:
        stmt = stmt.where(User.department == department)
    return _page(session, stmt.order_by(User.username), offset=offset, limit=limit)


def update_user(*, session: Session, user_id: int, user_in: UserUpdate) -> User:
    """Change the fields set in ``user_in`` (``is_active`` False disables the user); raises :class:`NotFound`."""
    user = get_user(session=session, user_id=user_id)
    for field, value in user_in.model_dump(exclude_unset=True).items():
        setattr(user, field, value)
    session.flush()
    return user


def create_api_key(*, session: Session, user_id: int, name: str, prefix: str, key_hash: str) -> ApiKey:
    """Record an API key (generated and hashed by the caller); :class:`Conflict` when the prefix is taken."""
    get_user(session=session, user_id=user_id)
    key = ApiKey(user_id=user_id, name=name, prefix=prefix, key_hash=key_hash)
    return _insert_unique(session, key, lambda: f"an API key with prefix {prefix!r} already exists")


def get_api_key(*, session: Session, key_id: int) -> ApiKey:
    """The API key with this id (revoked or not); raises :class:`NotFound`."""
    return _get(session, ApiKey, key_id, "API key")


def get_api_key_by_prefix(*, session: Session, prefix: str) -> ApiKey | None:
    """The API key with this prefix (revoked or not), or None."""
    return session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))


def list_api_keys(*, session: Session, user_id: int) -> list[ApiKey]:
    """A user's API keys, oldest first."""
    return list(session.scalars(select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.id)))


def revoke_api_key(*, session: Session, key_id: int, at: datetime | None = None) -> ApiKey:
    """Mark an API key revoked (kept for the audit trail); revoking twice keeps the first time."""
    key = get_api_key(session=session, key_id=key_id)
    if key.revoked_at is None:
        key.revoked_at = at or utcnow()
        session.flush()
    return key


# -- tasks ---------------------------------------------------------------------------------------------------


def ensure_task(*, session: Session, task: str | TaskSpec) -> TaskRow:
    """The records row of a registered task, written on first use (another writer racing us is fine).

    Raises:
        ConfigError: no task of that name is registered.
    """
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    row = session.get(TaskRow, spec.name)
    if row is not None:
        return row
    try:
        with session.begin_nested():
            row = TaskRow(name=spec.name, body_part=spec.body_part, views=list(spec.views))
            session.add(row)
    except IntegrityError:  # written by a concurrent request or replica since our look-up
        row = session.get(TaskRow, spec.name, populate_existing=True)
        if row is None:
            raise
    return row


def sync_tasks(*, session: Session) -> list[str]:
    """Write every registered task's row (service start-up, ``db upgrade``); returns the task names."""
    return [ensure_task(session=session, task=spec).name for spec in all_tasks()]


# -- studies and images --------------------------------------------------------------------------------------


def create_study(*, session: Session, study_in: StudyCreate, created_by_id: int | None = None) -> Study:
    """Add a study for an existing patient, in the patient's department; :class:`NotFound` for a missing patient
    or referring doctor."""
    patient = get_patient(session=session, patient_id=study_in.patient_id)
    if study_in.referring_doctor_id is not None:
        get_user(session=session, user_id=study_in.referring_doctor_id)
    ensure_task(session=session, task=study_in.task)
    study = Study(**study_in.model_dump(), department=patient.department, created_by_id=created_by_id)
    session.add(study)
    session.flush()
    return study


def get_study(*, session: Session, study_id: int) -> Study:
    """The study with this id; raises :class:`NotFound`."""
    return _get(session, Study, study_id, "study")


def list_studies(
    *,
    session: Session,
    patient_id: int | None = None,
    department: str | None = None,
    task: str | None = None,
    offset: int = 0,
    limit: int = DEFAULT_LIMIT,
) -> tuple[list[Study], int]:
    """Studies, newest first, optionally of one patient, department or task."""
    stmt = select(Study)
    if patient_id is not None:
        stmt = stmt.where(Study.patient_id == patient_id)
    if department is not None:
        stmt = stmt.where(Study.department == department)
    if task is not None:
        stmt = stmt.where(Study.task == task)
    return _page(session, stmt.order_by(Study.created_at.desc(), Study.id.desc()), offset=offset, limit=limit)


def _find_image(session: Session, study_id: int, sha256: str, view: str) -> Image | None:
    return session.scalar(select(Image).where(Image.study_id == study_id, Image.sha256 == sha256, Image.view == view))


def add_image(
    *,
    session: Session,
    study_id: int,
    object_key: str,
    sha256: str,
    view: str,
    content_type: str,
    size_bytes: int,
    dicom_study_uid: str | None = None,
) -> Image:
    """Record an image of a study (``dicom_study_uid``: the StudyInstanceUID of a DICOM file); the same content in
    the same view of the same study returns the existing row."""
    get_study(session=session, study_id=study_id)
    existing = _find_image(session, study_id, sha256, view)
    if existing is not None:
        return existing
    image = Image(
        study_id=study_id,
        object_key=object_key,
        sha256=sha256,
        view=view,
        content_type=content_type,
        size_bytes=size_bytes,
        dicom_study_uid=dicom_study_uid,
    )
    try:
        with session.begin_nested():
            session.add(image)
            session.flush()
    except IntegrityError:  # a concurrent upload of the same image won the race
        found = _find_image(session, study_id, sha256, view)
        if found is None:
            raise
        return found
    return image


def list_images(*, session: Session, study_id: int) -> list[Image]:
    """A study's images in upload order."""
    return list(session.scalars(select(Image).where(Image.study_id == study_id).order_by(Image.id)))


def images_of_dicom_study(*, session: Session, study_uid: str) -> list[Image]:
    """Images uploaded as DICOM files of the study with this StudyInstanceUID, in upload order."""
    stmt = select(Image).where(Image.dicom_study_uid == study_uid).order_by(Image.id)
    return list(session.scalars(stmt))


# -- predictions and feedback --------------------------------------------------------------------------------


def add_prediction(*, session: Session, prediction_in: PredictionCreate) -> Prediction:
    """Record a model's answer (``study_id`` None: anonymous)."""
    ensure_task(session=session, task=prediction_in.task)
    prediction = Prediction(**prediction_in.model_dump())
    session.add(prediction)
    session.flush()
    return prediction


def get_prediction(*, session: Session, prediction_id: int) -> Prediction:
    """The prediction with this id; raises :class:`NotFound`."""
    return _get(session, Prediction, prediction_id, "prediction")


def model_versions(*, session: Session) -> list[tuple[str, str | None]]:
    """Each (model name, version) that answered a stored prediction."""
    stmt = select(Prediction.model_name, Prediction.model_version).distinct()
    return [(name, version) for name, version in session.execute(stmt)]


def list_predictions(
    *,
    session: Session,
    study_id: int | None = None,
    task: str | None = None,
    offset: int = 0,
    limit: int = DEFAULT_LIMIT,
) -> tuple[list[Prediction], int]:
    """Predictions, newest first, optionally of one study or task."""
    stmt = select(Prediction)
    if study_id is not None:
        stmt = stmt.where(Prediction.study_id == study_id)
    if task is not None:
        stmt = stmt.where(Prediction.task == task)
    return _page(session, stmt.order_by(Prediction.id.desc()), offset=offset, limit=limit)


def add_feedback(
    *,
    session: Session,
    study_id: int,
    radiologist_id: int,
    feedback_in: FeedbackCreate,
    prediction_id: int | None = None,
    object_key: str | None = None,
) -> Feedback:
    """Record a radiologist's verdict on a study.

    Args:
        prediction_id: the prediction judged; default the study's latest, if any. Its label is kept as
            ``predicted_label`` and ``agrees`` says whether it matches ``true_label`` (case-insensitive).
        object_key: where the image was copied for retraining (``feedback/<task>/<LABEL>/...``).
    """
    study = get_study(session=session, study_id=study_id)
    get_user(session=session, user_id=radiologist_id)
    prediction: Prediction | None
    if prediction_id is not None:
        prediction = get_prediction(session=session, prediction_id=prediction_id)
        if prediction.study_id != study.id:
            raise DataError(f"prediction {prediction_id} is not a prediction of study {study_id}")
    else:
        prediction = session.scalar(
            select(Prediction).where(Prediction.study_id == study.id).order_by(Prediction.id.desc()).limit(1)
        )
    predicted = prediction.label if prediction is not None else None
    feedback = Feedback(
        study_id=study.id,
        prediction_id=prediction.id if prediction is not None else None,
        radiologist_id=radiologist_id,
        predicted_label=predicted,
        true_label=feedback_in.true_label,
        agrees=predicted is not None and predicted.casefold() == feedback_in.true_label.casefold(),
        comment=feedback_in.comment,
        object_key=object_key,
    )
    session.add(feedback)
    session.flush()
    return feedback


def list_feedback(
    *,
    session: Session,
    task: str | None = None,
    study_id: int | None = None,
    offset: int = 0,
    limit: int = DEFAULT_LIMIT,
) -> tuple[list[Feedback], int]:
    """Feedback, oldest first (the order retraining reads it in), optionally of one task or study."""
    stmt = select(Feedback)
    if task is not None:
        stmt = stmt.join(Study, Feedback.study_id == Study.id).where(Study.task == task)
    if study_id is not None:
        stmt = stmt.where(Feedback.study_id == study_id)
    return _page(session, stmt.order_by(Feedback.id), offset=offset, limit=limit)


def results_to_push(*, session: Session, limit: int = DEFAULT_LIMIT) -> list[tuple[Prediction, int]]:
    """Predictions of studies a FHIR server has not been sent as they stand, oldest first, each with its number of
    verdicts (on it, or on its whole study): never sent, or sent showing fewer verdicts."""
    verdicts = (
        select(func.count(Feedback.id))
        .where(
            Feedback.study_id == Prediction.study_id,
            or_(Feedback.prediction_id == Prediction.id, Feedback.prediction_id.is_(None)),
        )
        .correlate(Prediction)
        .scalar_subquery()
    )
    stmt = (
        select(Prediction, verdicts)
        .outerjoin(FhirPush, FhirPush.prediction_id == Prediction.id)
        .where(Prediction.study_id.is_not(None), or_(FhirPush.prediction_id.is_(None), FhirPush.verdicts < verdicts))
        .order_by(Prediction.id)
        .limit(limit)
    )
    return [(prediction, int(count)) for prediction, count in session.execute(stmt)]


def mark_pushed(*, session: Session, prediction_id: int, verdicts: int, status: str) -> FhirPush:
    """Note that a FHIR server now holds ``prediction_id`` as ``status`` with ``verdicts`` verdicts."""
    row = session.get(FhirPush, prediction_id)
    if row is None:
        row = FhirPush(prediction_id=prediction_id, verdicts=verdicts, status=status)
        session.add(row)
    else:
        row.verdicts, row.status, row.pushed_at = verdicts, status, utcnow()
    session.flush()
    return row


def recent_outcomes(*, session: Session, task: str, limit: int) -> list[tuple[str | None, bool | None, str]]:
    """The latest verdict on each of the last ``limit`` confirmed studies of ``task``, newest first.

    Each item is (predicted label, whether the prediction was positive, true label); the first two are None for a
    study confirmed without a prediction. A study confirmed twice counts once, with its latest verdict.
    """
    latest = (
        select(func.max(Feedback.id).label("id"))
        .join(Study, Feedback.study_id == Study.id)
        .where(Study.task == task)
        .group_by(Feedback.study_id)
        .order_by(func.max(Feedback.id).desc())
        .limit(limit)
        .subquery()
    )
    stmt = (
        select(Feedback.predicted_label, Prediction.positive, Feedback.true_label)
        .join(latest, Feedback.id == latest.c.id)
        .outerjoin(Prediction, Feedback.prediction_id == Prediction.id)
        .order_by(Feedback.id.desc())
    )
    return [(predicted, positive, truth) for predicted, positive, truth in session.execute(stmt)]


def version_outcomes(
    *, session: Session, task: str, version: str, since: datetime | None = None
) -> list[tuple[bool, str]]:
    """Radiologists' verdicts on the studies model version ``version`` of ``task`` answered (since ``since``):
    (whether its prediction was positive, the true label), the latest verdict of each study."""
    return _verdicts_on(session, Prediction, Prediction.id, task, version, since)


def shadow_outcomes(
    *, session: Session, task: str, version: str, since: datetime | None = None
) -> list[tuple[bool, str]]:
    """Radiologists' verdicts on the studies version ``version`` scored in shadow (since ``since``): (whether its
    unseen answer was positive, the true label), the latest verdict of each study."""
    return _verdicts_on(session, ShadowPrediction, ShadowPrediction.prediction_id, task, version, since)


def _verdicts_on(
    session: Session,
    answers: type[Prediction] | type[ShadowPrediction],
    link: Any,
    task: str,
    version: str,
    since: datetime | None,
) -> list[tuple[bool, str]]:
    """(answer positive, true label) of the latest verdict on each study ``version`` answered in ``answers``,
    whose ``link`` column is the shown prediction a verdict names."""
    latest = (
        select(func.max(Feedback.id).label("id"))
        .join(answers, Feedback.prediction_id == link)
        .where(answers.task == task, answers.model_version == version)
        .group_by(Feedback.study_id)
    )
    if since is not None:
        latest = latest.where(answers.created_at >= since)
    chosen = latest.subquery()
    stmt = (
        select(answers.positive, Feedback.true_label)
        .join(Feedback, Feedback.prediction_id == link)
        .join(chosen, Feedback.id == chosen.c.id)
        .where(answers.model_version == version)
    )
    return [(bool(positive), truth) for positive, truth in session.execute(stmt)]


# -- release evidence ----------------------------------------------------------------------------------------


def add_shadow_prediction(*, session: Session, shadow: ShadowPrediction) -> ShadowPrediction:
    """Keep a canary's unseen answer on a production prediction's films."""
    ensure_task(session=session, task=shadow.task)
    session.add(shadow)
    session.flush()
    return shadow


def shadow_pairs(
    *, session: Session, task: str, version: str, since: datetime | None = None
) -> list[tuple[str, bool, str, bool]]:
    """Every film version ``version`` scored in shadow (since ``since``), with production's answer on it:
    (production's label, its decision, the shadow's label, its decision)."""
    stmt = (
        select(Prediction.label, Prediction.positive, ShadowPrediction.label, ShadowPrediction.positive)
        .join(Prediction, ShadowPrediction.prediction_id == Prediction.id)
        .where(ShadowPrediction.task == task, ShadowPrediction.model_version == version)
    )
    if since is not None:
        stmt = stmt.where(ShadowPrediction.created_at >= since)
    return [(a, bool(b), c, bool(d)) for a, b, c, d in session.execute(stmt)]


def add_serving_stats(*, session: Session, rows: list[ServingStat]) -> None:
    """Keep replicas' traffic counts for some periods."""
    for task in {row.task for row in rows}:
        ensure_task(session=session, task=task)
    session.add_all(rows)
    session.flush()


def serving_totals(
    *, session: Session, task: str, version: str, roles: tuple[str, ...], since: datetime | None = None
) -> tuple[int, int, int, list[int]]:
    """Traffic of version ``version`` in ``roles`` over every replica (since ``since``): requests, errors, refused
    and the summed latency histogram."""
    stmt = select(ServingStat).where(
        ServingStat.task == task, ServingStat.model_version == version, ServingStat.role.in_(roles)
    )
    if since is not None:
        stmt = stmt.where(ServingStat.at >= since)
    requests = errors = refused = 0
    counts = [0] * (len(LATENCY_BUCKETS_MS) + 1)
    for row in session.scalars(stmt):
        requests, errors, refused = requests + row.requests, errors + row.errors, refused + row.refused
        for i, n in enumerate(row.latency_counts[: len(counts)]):
            counts[i] += int(n)
    return requests, errors, refused, counts


# -- drift checks --------------------------------------------------------------------------------------------


def add_drift_check(*, session: Session, check: DriftCheck) -> DriftCheck:
    """Store one drift check."""
    ensure_task(session=session, task=check.task)
    session.add(check)
    session.flush()
    return check


def list_drift_checks(
    *, session: Session, task: str, since: datetime | None = None, limit: int = MAX_LIMIT
) -> list[DriftCheck]:
    """A task's drift checks, oldest first: the latest ``limit`` (at most ``MAX_LIMIT``), optionally since a time.
    Each check's full ``detail`` is loaded only when it is read."""
    stmt = select(DriftCheck).options(defer(DriftCheck.detail)).where(DriftCheck.task == task)
    if since is not None:
        stmt = stmt.where(DriftCheck.at >= since)
    newest = session.scalars(stmt.order_by(DriftCheck.id.desc()).limit(min(limit, MAX_LIMIT))).all()
    return list(reversed(newest))


def latest_drift_alarm(*, session: Session, task: str, since: datetime) -> datetime | None:
    """When the latest drift check of ``task`` since ``since`` that found drift ran, if one did."""
    stmt = select(func.max(DriftCheck.at)).where(
        DriftCheck.task == task, DriftCheck.at >= since, DriftCheck.drifted.is_(True)
    )
    return session.scalar(stmt)


# -- audit ---------------------------------------------------------------------------------------------------


def write_audit(
    *,
    session: Session,
    user: User | None,
    action: str,
    resource_type: str,
    resource_id: str | int | None = None,
    request_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditLog:
    """Append an audit row: ``user`` None records an anonymous caller."""
    row = AuditLog(
        user_id=user.id if user is not None else None,
        username=user.username if user is not None else "anonymous",
        action=action,
        resource_type=resource_type,
        resource_id=str(resource_id) if resource_id is not None else None,
        request_id=request_id,
        detail=detail or {},
    )
    session.add(row)
    session.flush()
    return row


def list_audit(
    *,
    session: Session,
    user_id: int | None = None,
    username: str | None = None,
    action: str | None = None,
    resource_type: str | None = None,
    resource_id: str | int | None = None,
    since: datetime | None = None,
    offset: int = 0,
    limit: int = DEFAULT_LIMIT,
) -> tuple[list[AuditLog], int]:
    """Audit rows, newest first, optionally filtered by user (id or name), action, resource or time."""
    stmt = select(AuditLog)
    if user_id is not None:
        stmt = stmt.where(AuditLog.user_id == user_id)
    if username is not None:
        stmt = stmt.where(AuditLog.username == username)
    if action is not None:
        stmt = stmt.where(AuditLog.action == action)
    if resource_type is not None:
        stmt = stmt.where(AuditLog.resource_type == resource_type)
    if resource_id is not None:
        stmt = stmt.where(AuditLog.resource_id == str(resource_id))
    if since is not None:
        stmt = stmt.where(AuditLog.at >= since)
    return _page(session, stmt.order_by(AuditLog.at.desc(), AuditLog.id.desc()), offset=offset, limit=limit)


PRIORITIES = ("flagged", "low_confidence", "routine")  # triage tiers, read in this order


def worklist_rows(
    *,
    session: Session,
    department: str | None,
    task: str | None = None,
    status: str = "awaiting",
    offset: int = 0,
    limit: int = DEFAULT_LIMIT,
) -> tuple[list[dict[str, Any]], int]:
    """Studies with an AI answer, as worklist rows (``WorklistItem`` fields), and their count.

    A study is *awaiting* review until a verdict is filed on its latest prediction, then *reviewed*. Awaiting
    studies come in triage order: flagged (positive) first, then low-confidence, then the rest, each tier
    longest-waiting first; reviewed ones newest verdict first.

    Args:
        department: only studies of this department (None: all).
        task: only studies of this task.
        status: ``awaiting`` or ``reviewed``.
    """
    if status not in ("awaiting", "reviewed"):
        raise DataError(f"unknown worklist status {status!r}; choose awaiting or reviewed")
    latest = (
        select(Prediction.study_id, func.max(Prediction.id).label("prediction_id"))
        .where(Prediction.study_id.is_not(None))
        .group_by(Prediction.study_id)
        .subquery()
    )
    verdict = select(Feedback.prediction_id, func.max(Feedback.id).label("feedback_id")).group_by(
        Feedback.prediction_id
    )
    verdicts = verdict.subquery()
    reader = aliased(User)
    tier = case((Prediction.positive, 0), (Prediction.confidence == "low", 1), else_=2)
    stmt = (
        select(Study, Patient, Prediction, Feedback, reader.username, tier.label("tier"))
        .join(latest, latest.c.study_id == Study.id)
        .join(Prediction, Prediction.id == latest.c.prediction_id)
        .join(Patient, Patient.id == Study.patient_id)
        .outerjoin(verdicts, verdicts.c.prediction_id == Prediction.id)
        .outerjoin(Feedback, Feedback.id == verdicts.c.feedback_id)
        .outerjoin(reader, reader.id == Feedback.radiologist_id)
    )
    if department is not None:
        stmt = stmt.where(Study.department == department)
    if task is not None:
        stmt = stmt.where(Study.task == task)
    if status == "awaiting":
        stmt = stmt.where(verdicts.c.feedback_id.is_(None)).order_by(tier, Prediction.created_at, Study.id)
    else:
        stmt = stmt.where(verdicts.c.feedback_id.is_not(None)).order_by(Feedback.created_at.desc(), Feedback.id.desc())
    offset, limit = _window(offset, limit)
    count = session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery())) or 0
    rows = session.execute(stmt.offset(offset).limit(limit)).all() if limit else []
    images = latest_images(session, [row[0].id for row in rows])
    return [
        {
            "study_id": study.id,
            "task": study.task,
            "department": study.department,
            "accession": study.accession,
            "study_created_at": study.created_at,
            "patient_id": patient.id,
            "patient_mrn": patient.mrn,
            "patient_name": patient.name,
            "priority": PRIORITIES[int(rank)],
            "prediction_id": prediction.id,
            "label": prediction.label,
            "positive": prediction.positive,
            "confidence": prediction.confidence,
            "probabilities": prediction.probabilities,
            "confidence_reasons": prediction.confidence_reasons or [],
            "waiting_since": prediction.created_at,
            "images": images.get(study.id, {}),
            "reviewed_at": feedback.created_at if feedback is not None else None,
            "reviewed_by": username,
            "true_label": feedback.true_label if feedback is not None else None,
            "agrees": feedback.agrees if feedback is not None else None,
        }
        for study, patient, prediction, feedback, username, rank in rows
    ], count


def latest_images(session: Session, study_ids: list[int]) -> dict[int, dict[str, int]]:
    """The latest stored image id of each view of each study: {study id: {view: image id}}."""
    if not study_ids:
        return {}
    stmt = (
        select(Image.study_id, Image.view, func.max(Image.id))
        .where(Image.study_id.in_(study_ids))
        .group_by(Image.study_id, Image.view)
    )
    out: dict[int, dict[str, int]] = {}
    for study_id, view, image_id in session.execute(stmt):
        out.setdefault(study_id, {})[view] = image_id
    return out
