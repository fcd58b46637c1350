"""Signing in over HTTP: ``POST /v1/auth/token`` (OAuth2 password flow) and ``GET /v1/auth/me``.

Every other authenticated request sends ``Authorization: Bearer <credential>``, an access token from here
(people) or an API key (machines); the dependencies that check it are in :mod:`care_companion.serving.deps`,
the rules (credentials, the sign-in lockout, audit) in :mod:`care_companion.access`.
"""

from __future__ import annotations

from math import ceil
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from fastapi.security import OAuth2PasswordRequestForm

from care_companion.access.credentials import TOKEN_URL
from care_companion.access.signin import TooManyAttempts, sign_in
from care_companion.config import Settings
from care_companion.errors import AuthError
from care_companion.records.models import User
from care_companion.records.schemas import UserPublic
from care_companion.security import Role, create_access_token

# Kept here for ``serving.routes`` until it imports them from ``serving.deps`` / ``serving.schemas``.
from care_companion.serving.deps import CurrentUser, RequestId, SessionDep, SettingsDep
from care_companion.serving.http_errors import error_response
from care_companion.serving.schemas import AUTH_ERRORS, ErrorBody, Token

auth_router = APIRouter(tags=["auth"], responses=AUTH_ERRORS)


def issue_token(user: User, settings: Settings) -> Token:
    """A fresh access token for ``user``."""
    token = create_access_token(username=user.username, role=user.role, department=user.department, settings=settings)
    return Token(access_token=token, expires_in=settings.access_token_minutes * 60, role=Role(user.role))


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
    request_id: RequestId,
) -> Token | JSONResponse:
    """Exchange a username and password (form fields) for an access token.

    A wrong password and an unknown user get the same 401 ``invalid_credentials``; both are audited
    (``auth.failed``, with the username tried), as is every success (``auth.login``). After
    ``CARE_LOGIN_MAX_FAILURES`` failures a username is locked for ``CARE_LOGIN_LOCKOUT_MINUTES`` (429
    ``too_many_attempts`` with ``Retry-After``, audited as ``auth.locked``), whatever password is sent.
    """
    # Refusals are answered, not raised, so their audit rows commit with the request's transaction.
    try:
        user = sign_in(
            session=session, username=form.username, password=form.password, settings=settings, request_id=request_id
        )
    except TooManyAttempts as exc:
        return error_response(exc.status, exc.code, exc.detail, {"Retry-After": str(ceil(exc.retry_after))})
    except AuthError as exc:
        return error_response(401, exc.code, exc.detail, {"WWW-Authenticate": "Bearer"})
    return issue_token(user, settings)


@auth_router.get("/v1/auth/me", response_model=UserPublic, summary="The signed-in user")
def me(user: CurrentUser) -> User:
    """The user the credential belongs to (no secrets)."""
    return user
