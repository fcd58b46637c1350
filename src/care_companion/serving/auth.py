"""Who is calling and what they may see: the session and user dependencies, permissions, departments, audit.

Every authenticated request sends ``Authorization: Bearer <credential>``, where the credential is either an
access token from ``POST /v1/auth/token`` (people) or an API key ``cc_<prefix>_<secret>`` (machines). The user
row is loaded on every request, so disabling a user or revoking a key takes effect at once, and the role used
is the one in the database, not the one the token was issued with.

Records of another department answer 404, exactly as a missing record does, so a caller cannot probe which
ids exist elsewhere (:func:`check_department`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from functools import lru_cache
from math import ceil
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from fastapi.security import OAuth2PasswordBearer, OAuth2PasswordRequestForm
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from care_companion.config import Settings
from care_companion.errors import AuthError, Forbidden, ServiceUnavailable
from care_companion.records.db import database_unavailable
from care_companion.records.models import AuditLog, User, utcnow
from care_companion.records.repos import (
    NotFound,
    get_api_key_by_prefix,
    get_user_by_username,
    list_audit,
    write_audit,
)
from care_companion.records.schemas import UserPublic
from care_companion.security import (
    API_KEY_PREFIX,
    Permission,
    Role,
    api_key_matches,
    api_key_prefix,
    can,
    create_access_token,
    decode_access_token,
    hash_password,
    verify_password,
)
from care_companion.serving.http_errors import error_response
from care_companion.serving.schemas import ErrorBody

TOKEN_URL = "/v1/auth/token"
NOT_AUTHENTICATED = f"not authenticated: send Authorization: Bearer <token> (POST {TOKEN_URL}) or an API key"
INVALID_CREDENTIALS = "invalid username or password"
AUDIT_USERNAME_CHARS = 64

AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "No, malformed, expired or unknown credentials."},
    403: {"model": ErrorBody, "description": "The caller's role lacks the permission this endpoint needs."},
}

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


def get_session(request: Request) -> Iterator[Session]:
    """The request's session, one transaction for the whole request (:func:`own_session`): it commits when the
    endpoint returns, so a request's writes (audit rows included) land together or not at all."""
    with own_session(request) as session:
        yield session


# ``scope="function"``: the commit runs before the response is sent, so a failed commit is the answer.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def get_settings_dep(request: Request) -> Settings:
    """The app's settings."""
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]

# -- who is calling ------------------------------------------------------------------------------------------

bearer = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=False)


def user_for_api_key(*, session: Session, key: str) -> User:
    """The active user owning the unrevoked API key ``key``; :class:`AuthError` (``invalid_api_key``) otherwise."""
    stored = get_api_key_by_prefix(session=session, prefix=api_key_prefix(key))
    if stored is None or not api_key_matches(key, stored.key_hash):
        raise AuthError("unknown API key", code="invalid_api_key")
    if stored.revoked_at is not None:
        raise AuthError("this API key has been revoked", code="invalid_api_key")
    if not stored.user.is_active:
        raise AuthError("the API key's user is disabled", code="invalid_api_key")
    return stored.user


def user_for_token(*, session: Session, token: str, settings: Settings) -> User:
    """The active user an access token names; :class:`AuthError` for a bad token or a missing/disabled user."""
    claims = decode_access_token(token, settings)
    user = get_user_by_username(session=session, username=claims.sub)
    if user is None or not user.is_active:
        raise AuthError("the access token's user does not exist or is disabled", code="invalid_token")
    return user


def authenticate_credential(*, session: Session, credential: str | None, settings: Settings) -> User:
    """The user behind a bearer credential: an API key (``cc_...``) or an access token."""
    if not credential:
        raise AuthError(NOT_AUTHENTICATED)
    if credential.startswith(f"{API_KEY_PREFIX}_"):
        return user_for_api_key(session=session, key=credential)
    return user_for_token(session=session, token=credential, settings=settings)


def current_user(
    session: SessionDep, settings: SettingsDep, credential: Annotated[str | None, Depends(bearer)]
) -> User:
    """The authenticated, active user of this request (401 otherwise)."""
    return authenticate_credential(session=session, credential=credential, settings=settings)


CurrentUser = Annotated[User, Depends(current_user)]


def check_permission(user: User, permission: Permission) -> User:
    """``user`` when their role has ``permission``; :class:`Forbidden` (403) otherwise."""
    if not can(user.role, permission):
        raise Forbidden(f"role {user.role!r} does not have the {permission.value!r} permission")
    return user


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


Uploader = Annotated[User, Depends(require_briefly(Permission.PREDICT))]


# -- departments ---------------------------------------------------------------------------------------------


def visible_department(user: User) -> str | None:
    """The one department whose records ``user`` sees, or None for all (roles with READ_ALL_DEPARTMENTS)."""
    return None if can(user.role, Permission.READ_ALL_DEPARTMENTS) else user.department


def check_department(user: User, department: str, *, what: str = "record") -> None:
    """Raise :class:`NotFound` ("``what`` not found", the same answer as a missing record: existence does not
    leak) when ``department`` is not visible to ``user``."""
    visible = visible_department(user)
    if visible is not None and department != visible:
        raise NotFound(f"{what} not found")


def check_assignable(user: User, department: str) -> None:
    """Raise :class:`Forbidden` when ``user`` may not put a record in ``department`` (non-admins: own only)."""
    visible = visible_department(user)
    if visible is not None and department != visible:
        raise Forbidden(f"a {user.role} may only create or move records in their own department ({visible!r})")


# -- audit ---------------------------------------------------------------------------------------------------


def request_id_of(request: Request) -> str | None:
    """The id the request guard gave this request, or None outside the full app."""
    state = request.scope.get("state") or {}
    value = state.get("request_id") if isinstance(state, dict) else getattr(state, "request_id", None)
    return str(value) if value is not None else None


def audit(
    session: Session,
    user: User | None,
    request: Request,
    action: str,
    resource_type: str,
    resource_id: str | int | None = None,
    **detail: Any,
) -> AuditLog:
    """Append an audit row for ``user`` (None: anonymous) with this request's id; ``detail`` must hold ids and
    counts, never patient names or free text typed by the caller."""
    return write_audit(
        session=session,
        user=user,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        request_id=request_id_of(request),
        detail=detail,
    )


def audit_briefly(
    user: User | None,
    request: Request,
    action: str,
    resource_type: str,
    resource_id: str | int | None = None,
    **detail: Any,
) -> None:
    """:func:`audit` in a short session of its own, for routes that hold no request session (blocking)."""
    with own_session(request) as session:
        audit(session, user, request, action, resource_type, resource_id, **detail)


# -- signing in ----------------------------------------------------------------------------------------------


class Token(BaseModel):
    """An access token for ``Authorization: Bearer``."""

    access_token: str
    token_type: str = "bearer"
    expires_in: int = Field(description="Seconds until the token expires.")
    role: Role


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return hash_password("care-companion-timing-equaliser")


def authenticate(*, session: Session, username: str, password: str) -> User | None:
    """The active user with this username and password, or None.

    A missing user, a machine user without a password and a disabled user cost one hash verification too, so
    timing does not tell which usernames exist.
    """
    user = get_user_by_username(session=session, username=username)
    if user is None or not user.password_hash:
        verify_password(_dummy_hash(), password or "-")
        return None
    if not verify_password(user.password_hash, password) or not user.is_active:
        return None
    return user


def issue_token(user: User, settings: Settings) -> Token:
    """A fresh access token for ``user``."""
    token = create_access_token(username=user.username, role=user.role, department=user.department, settings=settings)
    return Token(access_token=token, expires_in=settings.access_token_minutes * 60, role=Role(user.role))


auth_router = APIRouter(tags=["auth"], responses=AUTH_ERRORS)


def login_locked_for(session: Session, username: str, settings: Settings) -> float:
    """Seconds until ``username`` may try again: its failed sign-ins since its last success, within the last
    ``login_lockout_minutes``, reached ``login_max_failures`` (0: not locked). Counted from the audit log, so
    every replica agrees and a restart does not reset it."""
    window = timedelta(minutes=settings.login_lockout_minutes)
    since = utcnow() - window
    successes, _ = list_audit(session=session, username=username, action="auth.login", since=since, limit=1)
    if successes:
        since = max(since, successes[0].at)
    failures, count = list_audit(
        session=session, action="auth.failed", resource_type="login", resource_id=username, since=since, limit=1
    )
    if count < settings.login_max_failures:
        return 0.0
    return max(1.0, (failures[0].at + window - utcnow()).total_seconds())


@auth_router.post(
    TOKEN_URL,
    response_model=Token,
    summary="Sign in (OAuth2 password flow)",
    responses={429: {"model": ErrorBody, "description": "Too many failed sign-ins of this username; wait."}},
)
def login(
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    session: SessionDep,
    settings: SettingsDep,
    request: Request,
) -> Token | JSONResponse:
    """Exchange a username and password (form fields) for an access token.

    A wrong password and an unknown user get the same 401 ``invalid_credentials``; both are audited
    (``auth.failed``, with the username tried), as is every success (``auth.login``). After
    ``CARE_LOGIN_MAX_FAILURES`` failures a username is locked for ``CARE_LOGIN_LOCKOUT_MINUTES`` (429
    ``too_many_attempts`` with ``Retry-After``, audited as ``auth.locked``), whatever password is sent.
    """
    username = form.username[:AUDIT_USERNAME_CHARS]
    wait = login_locked_for(session, username, settings)
    if wait:
        audit(session, None, request, "auth.locked", "login", username, username=username)
        return error_response(
            429,
            "too_many_attempts",
            f"too many failed sign-ins for this username; try again in {ceil(wait / 60)} min",
            {"Retry-After": str(ceil(wait))},
        )
    user = authenticate(session=session, username=form.username, password=form.password)
    if user is None:
        # Answer without raising so the audit row of the failure commits with the request's transaction.
        audit(session, None, request, "auth.failed", "login", username, username=username)
        return error_response(401, "invalid_credentials", INVALID_CREDENTIALS, {"WWW-Authenticate": "Bearer"})
    audit(session, user, request, "auth.login", "user", user.id)
    return issue_token(user, settings)


@auth_router.get("/v1/auth/me", response_model=UserPublic, summary="The signed-in user")
def me(user: CurrentUser) -> User:
    """The user the credential belongs to (no secrets)."""
    return user
