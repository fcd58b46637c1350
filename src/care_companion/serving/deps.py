"""Every FastAPI dependency of the service, as ``Annotated`` aliases routes declare (``session: SessionDep,
user: Reader``): settings, the request's database session, the caller and their permissions, and the app's
parts (predictor, models, record keeper, monitor, object store, metrics).

This is the only module that reads ``app.state``. Who a credential belongs to and what a role may do are
decided in :mod:`care_companion.access`; here they are only wired to the request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from care_companion.access.audit import audit
from care_companion.access.credentials import TOKEN_URL, authenticate_credential, check_permission
from care_companion.config import Settings
from care_companion.errors import ServiceUnavailable
from care_companion.monitoring.metrics import ServiceMetrics
from care_companion.records.db import database_unavailable
from care_companion.records.models import User
from care_companion.security import Permission
from care_companion.serving.manager import ModelManager
from care_companion.serving.monitor import Monitor
from care_companion.serving.persistence import RecordKeeper
from care_companion.serving.predict import Predictor
from care_companion.storage.base import ObjectStore

# -- settings and the request's id ---------------------------------------------------------------------------


def get_settings_dep(request: Request) -> Settings:
    """The app's settings."""
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def request_id_of(request: Request) -> str | None:
    """The id the request guard gave this request, or None outside the full app."""
    state = request.scope.get("state") or {}
    value = state.get("request_id") if isinstance(state, dict) else getattr(state, "request_id", None)
    return str(value) if value is not None else None


RequestId = Annotated[str | None, Depends(request_id_of)]

# -- the database session ------------------------------------------------------------------------------------


def _session_maker(request: Request) -> sessionmaker[Session]:
    sessions: sessionmaker[Session] | None = getattr(request.app.state, "sessions", None)
    if sessions is None:
        raise ServiceUnavailable("this service has no records database configured", code="database_unavailable")
    return sessions


@contextmanager
def own_session(request: Request) -> Iterator[Session]:
    """A session inside one transaction: it commits on exit and rolls back on an error.

    A database that cannot be reached (or is locked) becomes :class:`ServiceUnavailable` (503), without secrets.
    """
    try:
        with _session_maker(request)() as session, session.begin():
            yield session
    except DBAPIError as exc:
        if isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated:
            raise database_unavailable(exc) from exc
        raise


def get_sessions(request: Request) -> sessionmaker[Session]:
    """The records database's session factory, for routes that read in a worker thread (503 without one)."""
    return _session_maker(request)


SessionsDep = Annotated[sessionmaker[Session], Depends(get_sessions)]


def get_session(request: Request) -> Iterator[Session]:
    """The request's session, one transaction for the whole request (:func:`own_session`): it commits when the
    endpoint returns, so a request's writes (audit rows included) land together or not at all."""
    with own_session(request) as session:
        yield session


# ``scope="function"``: the commit runs before the response is sent, so a failed commit is the answer.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def audit_briefly(
    user: User | None,
    request: Request,
    action: str,
    resource_type: str,
    resource_id: str | int | None = None,
    **detail: Any,
) -> None:
    """Append an audit row (:func:`care_companion.access.audit.audit`) in a short session of its own, for routes
    that hold no request session (blocking: call it in a worker thread from async code)."""
    with own_session(request) as session:
        audit(session, user, action, resource_type, resource_id, request_id=request_id_of(request), **detail)


# -- who is calling ------------------------------------------------------------------------------------------

bearer = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=False)


def current_user(
    session: SessionDep, settings: SettingsDep, credential: Annotated[str | None, Depends(bearer)]
) -> User:
    """The authenticated, active user of this request (401 otherwise)."""
    return authenticate_credential(session=session, credential=credential, settings=settings)


CurrentUser = Annotated[User, Depends(current_user)]


def require(permission: Permission) -> Callable[[User], User]:
    """A dependency that returns the current user when their role has ``permission``, else 403."""

    def dependency(user: CurrentUser) -> User:
        return check_permission(user, permission)

    dependency.__name__ = f"require_{permission.value}"
    return dependency


def require_briefly(permission: Permission) -> Callable[..., User]:
    """Like :func:`require`, but the user is looked up in a short session of its own, not the request's: for
    endpoints that do slow work (decoding an image, running or loading a model) with no database connection
    held meanwhile (on SQLite, a held transaction would stall every writer)."""

    def dependency(request: Request, settings: SettingsDep, credential: Annotated[str | None, Depends(bearer)]) -> User:
        with own_session(request) as session:
            user = authenticate_credential(session=session, credential=credential, settings=settings)
        return check_permission(user, permission)

    dependency.__name__ = f"require_{permission.value}_briefly"
    return dependency


# Users with a permission, looked up in the request's session.
Reader = Annotated[User, Depends(require(Permission.READ_RECORDS))]
Writer = Annotated[User, Depends(require(Permission.WRITE_RECORDS))]
Auditor = Annotated[User, Depends(require(Permission.READ_AUDIT))]
Radiologist = Annotated[User, Depends(require(Permission.FEEDBACK))]
UserAdmin = Annotated[User, Depends(require(Permission.MANAGE_USERS))]
# Users with a permission, looked up in a short session: for slow routes that hold no transaction.
Uploader = Annotated[User, Depends(require_briefly(Permission.PREDICT))]
ModelAdmin = Annotated[User, Depends(require_briefly(Permission.MANAGE_MODELS))]
Watcher = Annotated[User, Depends(require_briefly(Permission.MONITOR))]

# -- the app's parts -----------------------------------------------------------------------------------------


def _app_part(name: str, what: str) -> Callable[[Request], Any]:
    """A dependency that returns ``app.state.<name>`` (``what``: its docstring's words)."""

    def dependency(request: Request) -> Any:
        return getattr(request.app.state, name)

    dependency.__name__ = f"get_{name}"
    dependency.__doc__ = f"The app's {what}."
    return dependency


get_predictor: Callable[[Request], Predictor] = _app_part("predictor", "predictor")
get_models: Callable[[Request], ModelManager] = _app_part("models", "model manager")
get_records: Callable[[Request], RecordKeeper] = _app_part("records", "record keeper")
get_monitor: Callable[[Request], Monitor] = _app_part("monitor", "drift and model-health monitor")
get_store: Callable[[Request], ObjectStore] = _app_part("store", "object store (images, feedback copies)")
get_metrics: Callable[[Request], ServiceMetrics] = _app_part("metrics", "service metrics (Prometheus)")

PredictorDep = Annotated[Predictor, Depends(get_predictor)]
ModelsDep = Annotated[ModelManager, Depends(get_models)]
RecordsDep = Annotated[RecordKeeper, Depends(get_records)]
MonitorDep = Annotated[Monitor, Depends(get_monitor)]
StoreDep = Annotated[ObjectStore, Depends(get_store)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
