"""Accounts: create a user (the first admin bootstraps the service) or, for the demo, reset one.

Passwords are generated when not given and returned once, for the caller to show; only their argon2 hashes
are stored. An API key (for machines) is likewise shown once and stored as a hash.
"""

from __future__ import annotations

from dataclasses import dataclass

from care_companion.config import Settings
from care_companion.records.db import check_migrated, make_engine, session_factory
from care_companion.records.repos import create_api_key, create_user, get_user_by_username
from care_companion.records.schemas import UserCreate
from care_companion.security import hash_password, new_api_key, new_password


@dataclass(frozen=True)
class Credentials:
    """What a new (or reset) account signs in with; ``password`` and ``api_key`` are shown once."""

    username: str
    role: str
    department: str
    password: str
    api_key: str | None
    generated: bool
    created: bool


def open_account(
    settings: Settings,
    *,
    username: str,
    role: str,
    department: str = "radiology",
    full_name: str | None = None,
    specialties: list[str] | None = None,
    password: str | None = None,
    api_key: bool = False,
    reset: bool = False,
) -> Credentials:
    """Create a user in the (migrated) records database; with ``reset`` an existing user gets a new password
    instead (and a new API key if asked), which is what the demo does on every run.

    Raises:
        ConfigError: the database is not migrated.
        Conflict: the username is taken (without ``reset``).
        ValidationError: a bad role, name or department, or a password under ``MIN_PASSWORD_LENGTH`` characters.
    """
    secret = password or new_password()
    user_in = UserCreate.model_validate(
        {
            "username": username,
            "full_name": full_name or username,
            "role": role,
            "specialties": list(specialties or []),
            "department": department,
            "password": secret,
        }
    )
    engine = make_engine(settings.db_url)
    try:
        check_migrated(engine)
        with session_factory(engine)() as session, session.begin():
            user = get_user_by_username(session=session, username=username) if reset else None
            created = user is None
            if user is None:
                user = create_user(session=session, user_in=user_in, password_hash=hash_password(secret))
            else:
                user.password_hash = hash_password(secret)
                user.is_active = True
            key = new_api_key() if api_key else None
            if key is not None:
                create_api_key(session=session, user_id=user.id, name="cli", prefix=key.prefix, key_hash=key.key_hash)
            credentials = Credentials(
                username=user.username,
                role=user.role,
                department=user.department,
                password=secret,
                api_key=key.key if key else None,
                generated=password is None,
                created=created,
            )
    finally:
        engine.dispose()
    return credentials
