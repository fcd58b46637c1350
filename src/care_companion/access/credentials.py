"""Who is calling: the user behind a bearer credential, and what their role lets them do.

A credential is either an access token (people, from signing in) or an API key ``cc_<prefix>_<secret>``
(machines). The user row is loaded for every credential, so disabling a user or revoking a key takes effect
at once, and the role used is the one in the database, not the one the token was issued with.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from care_companion.config import Settings
from care_companion.errors import AuthError, Forbidden
from care_companion.records.models import User
from care_companion.records.repos import get_api_key_by_prefix, get_user_by_username
from care_companion.security import (
    API_KEY_PREFIX,
    Permission,
    api_key_matches,
    api_key_prefix,
    can,
    decode_access_token,
)

TOKEN_URL = "/v1/auth/token"  # where people sign in for an access token
NOT_AUTHENTICATED = f"not authenticated: send Authorization: Bearer <token> (POST {TOKEN_URL}) or an API key"


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
    """The user behind a bearer credential: an API key (``cc_...``) or an access token; :class:`AuthError`
    (``unauthorized``) when there is none."""
    if not credential:
        raise AuthError(NOT_AUTHENTICATED)
    if credential.startswith(f"{API_KEY_PREFIX}_"):
        return user_for_api_key(session=session, key=credential)
    return user_for_token(session=session, token=credential, settings=settings)


def check_permission(user: User, permission: Permission) -> User:
    """``user`` when their role has ``permission``; :class:`Forbidden` (403) otherwise."""
    if not can(user.role, permission):
        raise Forbidden(f"role {str(user.role)!r} does not have the {permission.value!r} permission")
    return user
