"""Signing in with a username and password, and the lockout policy that slows password guessing.

Every attempt is audited: ``auth.login`` (success), ``auth.failed`` (a wrong password or an unknown user,
with the username tried) and ``auth.locked`` (an attempt while locked). After ``login_max_failures`` failed
attempts since its last success, within ``login_lockout_minutes``, a username is locked until the window
has passed, whatever password is sent. The policy is counted from the audit log, so every replica agrees and
a restart does not reset it.
"""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from math import ceil

from sqlalchemy.orm import Session

from care_companion.access.audit import audit
from care_companion.config import Settings
from care_companion.errors import AuthError, RequestError
from care_companion.records.models import User, utcnow
from care_companion.records.repos import get_user_by_username, list_audit
from care_companion.security import hash_password, verify_password

INVALID_CREDENTIALS = "invalid username or password"
AUDIT_USERNAME_CHARS = 64  # a username tried is kept in the audit log up to this length


class TooManyAttempts(RequestError):
    """Too many failed sign-ins of a username: it is locked for ``retry_after`` seconds (HTTP 429)."""

    code = "too_many_attempts"
    status = 429

    def __init__(self, detail: str, *, retry_after: float) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


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


def login_locked_for(session: Session, username: str, settings: Settings) -> float:
    """Seconds until ``username`` may try again: its failed sign-ins since its last success, within the last
    ``login_lockout_minutes``, reached ``login_max_failures`` (0: not locked)."""
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


def sign_in(
    *, session: Session, username: str, password: str, settings: Settings, request_id: str | None = None
) -> User:
    """The user signing in with ``username`` and ``password``, the attempt audited either way.

    The audit row of a refusal is written before the error is raised: a caller that wants it kept must commit
    the session rather than roll it back on these errors.

    Raises:
        TooManyAttempts: the username is locked (:func:`login_locked_for`); its password is not even checked.
        AuthError: a wrong password, an unknown, password-less or disabled user (``invalid_credentials``, the
            same answer for all, so it does not tell which usernames exist).
    """
    tried = username[:AUDIT_USERNAME_CHARS]
    wait = login_locked_for(session, tried, settings)
    if wait:
        audit(session, None, "auth.locked", "login", tried, request_id=request_id, username=tried)
        raise TooManyAttempts(
            f"too many failed sign-ins for this username; try again in {ceil(wait / 60)} min", retry_after=wait
        )
    user = authenticate(session=session, username=username, password=password)
    if user is None:
        audit(session, None, "auth.failed", "login", tried, request_id=request_id, username=tried)
        raise AuthError(INVALID_CREDENTIALS, code="invalid_credentials")
    audit(session, user, "auth.login", "user", user.id, request_id=request_id)
    return user
