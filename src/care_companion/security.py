"""Authentication primitives: roles and what they may do, password hashing, access tokens, API keys.

Passwords are hashed with argon2id (``argon2-cffi``). Access tokens are JWTs signed with HS256 and
``CARE_JWT_SECRET``; they carry the user name, role and department and expire after
``CARE_ACCESS_TOKEN_MINUTES``. API keys (for machines) look like ``cc_<prefix>_<secret>``: only a SHA-256
of the whole key is stored (the key is 190 random bits, so a fast hash is safe), and the prefix finds it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from pydantic import BaseModel, ValidationError

from care_companion.config import Settings
from care_companion.errors import AuthError

if TYPE_CHECKING:
    from argon2 import PasswordHasher

ALGORITHM = "HS256"
API_KEY_PREFIX = "cc"
MIN_PASSWORD_LENGTH = 8
GENERATED_PASSWORD_BYTES = 12  # 16 URL-safe characters, 96 random bits


class Role(StrEnum):
    """Who a user is in the department."""

    TECHNICIAN = "technician"
    RADIOLOGIST = "radiologist"
    ADMIN = "admin"


class Permission(StrEnum):
    """What an endpoint needs."""

    PREDICT = "predict"  # upload images for a result
    READ_RECORDS = "read_records"  # patients, studies, results (own department for technicians)
    WRITE_RECORDS = "write_records"  # create patients and studies
    FEEDBACK = "feedback"  # confirm or correct a result
    NOTES = "notes"  # patient-friendly notes
    READ_ALL_DEPARTMENTS = "read_all_departments"
    MANAGE_USERS = "manage_users"
    MANAGE_MODELS = "manage_models"  # promotion, reload
    READ_AUDIT = "read_audit"
    MONITOR = "monitor"  # drift and model-health monitoring, the dashboard


_TECHNICIAN = {Permission.PREDICT, Permission.READ_RECORDS, Permission.WRITE_RECORDS, Permission.MONITOR}
ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.TECHNICIAN: frozenset(_TECHNICIAN),
    Role.RADIOLOGIST: frozenset(_TECHNICIAN | {Permission.FEEDBACK, Permission.NOTES}),
    Role.ADMIN: frozenset(Permission),
}


def can(role: str, permission: Permission) -> bool:
    """Whether ``role`` has ``permission`` (unknown roles have none)."""
    try:
        return permission in ROLE_PERMISSIONS[Role(role)]
    except ValueError:
        return False


def _hasher() -> PasswordHasher:
    from argon2 import PasswordHasher

    return PasswordHasher()


def hash_password(password: str) -> str:
    """An argon2id hash of ``password`` (salted; the parameters travel inside the hash)."""
    if not password:
        raise ValueError("password must not be empty")
    return str(_hasher().hash(password))


def new_password() -> str:
    """A random password (16 URL-safe characters) for an account created without one; show it once."""
    return secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True when ``password`` matches ``password_hash``; False for a mismatch, no hash or a malformed hash."""
    from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

    if not password_hash or not password:
        return False
    try:
        return bool(_hasher().verify(password_hash, password))
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


class TokenClaims(BaseModel):
    """What an access token says about its bearer."""

    sub: str
    role: Role
    department: str
    iat: int
    exp: int


def create_access_token(
    *, username: str, role: str, department: str, settings: Settings, now: datetime | None = None
) -> str:
    """A signed access token for the user, valid for ``settings.access_token_minutes``."""
    import jwt

    issued = now or datetime.now(UTC)
    claims = {
        "sub": username,
        "role": Role(role).value,
        "department": department,
        "iat": int(issued.timestamp()),
        "exp": int((issued + timedelta(minutes=settings.access_token_minutes)).timestamp()),
    }
    return str(jwt.encode(claims, settings.jwt_secret, algorithm=ALGORITHM))


def decode_access_token(token: str, settings: Settings) -> TokenClaims:
    """The claims of a valid token; :class:`AuthError` (``token_expired`` or ``invalid_token``) otherwise."""
    import jwt

    try:
        payload = jwt.decode(
            token, settings.jwt_secret, algorithms=[ALGORITHM], options={"require": ["sub", "exp", "iat"]}
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("the access token has expired; log in again", code="token_expired") from None
    except jwt.PyJWTError as exc:
        raise AuthError(f"invalid access token ({exc})", code="invalid_token") from None
    try:
        return TokenClaims.model_validate(payload)
    except ValidationError:
        raise AuthError("invalid access token (unexpected claims)", code="invalid_token") from None


class NewApiKey(BaseModel):
    """A freshly made API key: show ``key`` once, store ``prefix`` and ``key_hash``."""

    key: str
    prefix: str
    key_hash: str


def hash_api_key(key: str) -> str:
    """SHA-256 (hex) of an API key."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> NewApiKey:
    """A random API key ``cc_<8-char prefix>_<32-char secret>`` with its prefix and hash."""
    prefix = secrets.token_hex(4)
    key = f"{API_KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(24)}"
    return NewApiKey(key=key, prefix=prefix, key_hash=hash_api_key(key))


def api_key_prefix(key: str) -> str:
    """The lookup prefix of an API key; :class:`AuthError` for anything not shaped like one."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != API_KEY_PREFIX or len(parts[1]) != 8 or not parts[2]:
        raise AuthError("malformed API key", code="invalid_api_key")
    return parts[1]


def api_key_matches(key: str, key_hash: str) -> bool:
    """Constant-time check of an API key against its stored hash."""
    return hmac.compare_digest(hash_api_key(key), key_hash)
