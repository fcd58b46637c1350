"""Users and their API keys as an admin manages them, each action audited.

Passwords and API keys are shown once, by the caller, to the admin who made them; only their hashes are
stored and the audit rows hold ids, roles and flags, never a secret. An admin cannot disable or demote their
own account (:func:`check_keeps_admin`), so the service never loses its last admin by accident.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from care_companion.access.audit import audit, ids
from care_companion.errors import RequestError
from care_companion.records.models import ApiKey, User
from care_companion.records.repos import (
    DEFAULT_LIMIT,
    NotFound,
    create_api_key,
    create_user,
    get_api_key,
    get_user,
    list_api_keys,
    list_users,
    revoke_api_key,
    update_user,
)
from care_companion.records.schemas import UserCreate, UserUpdate
from care_companion.security import Permission, can, hash_password, new_api_key, new_password

AUDITED_CHANGES = {"role", "department", "is_active"}  # values kept in the audit row; other fields by name only


@dataclass(frozen=True)
class NewUser:
    """A user just added; ``password`` is the generated one, to show once (None: the admin chose it)."""

    user: User
    password: str | None


@dataclass(frozen=True)
class NewKey:
    """An API key just made; ``key`` is the key itself, to show once."""

    api_key: ApiKey
    key: str


# -- the rules -----------------------------------------------------------------------------------------------


def initial_password(chosen: str | None) -> tuple[str, bool]:
    """The password a new account starts with and whether it was generated: the one chosen (its length is
    checked by :class:`UserCreate`), else a random one (:func:`care_companion.security.new_password`)."""
    if chosen:
        return chosen, False
    return new_password(), True


def check_keeps_admin(caller: User, user_id: int, changes: UserUpdate) -> None:
    """Refuse (422 ``self_lockout``) a caller disabling their own account or giving it a role that cannot
    manage users: the service must never lose its last admin by accident."""
    if user_id != caller.id:
        return
    if changes.is_active is False:
        raise RequestError("you cannot disable your own account; ask another admin", code="self_lockout")
    if changes.role is not None and not can(changes.role, Permission.MANAGE_USERS):
        raise RequestError(
            f"you cannot make your own account a {changes.role}: it would lose user management; ask another admin",
            code="self_lockout",
        )


def user_api_key(session: Session, user_id: int, key_id: int) -> ApiKey:
    """API key ``key_id`` of user ``user_id``; :class:`NotFound` when either is missing or the key is another's."""
    get_user(session=session, user_id=user_id)
    key = get_api_key(session=session, key_id=key_id)
    if key.user_id != user_id:
        raise NotFound(f"API key {key_id} not found")
    return key


# -- users ---------------------------------------------------------------------------------------------------


def find_users(
    *,
    session: Session,
    admin: User,
    role: str | None = None,
    department: str | None = None,
    offset: int = 0,
    limit: int = DEFAULT_LIMIT,
    request_id: str | None = None,
) -> tuple[list[User], int]:
    """Users by username, optionally of one role or department."""
    items, count = list_users(session=session, role=role, department=department, offset=offset, limit=limit)
    audit(session, admin, "user.list", "user", request_id=request_id, count=count, offset=offset, ids=ids(items))
    return items, count


def add_user(*, session: Session, admin: User, user_in: UserCreate, request_id: str | None = None) -> NewUser:
    """Add a user with the password given, or a generated one (:func:`initial_password`); only its argon2
    hash is kept.

    Raises:
        Conflict: the username is taken.
    """
    password, generated = initial_password(user_in.password)
    user = create_user(session=session, user_in=user_in, password_hash=hash_password(password))
    audit(
        session,
        admin,
        "user.create",
        "user",
        user.id,
        request_id=request_id,
        role=user.role,
        department=user.department,
        generated_password=generated,
    )
    return NewUser(user=user, password=password if generated else None)


def change_user(
    *, session: Session, admin: User, user_id: int, user_in: UserUpdate, request_id: str | None = None
) -> User:
    """Change the fields set in ``user_in`` (``is_active`` False disables the user, tokens and API keys too),
    never locking ``admin`` out (:func:`check_keeps_admin`). The audit row names every field changed and keeps
    the values of :data:`AUDITED_CHANGES` only."""
    check_keeps_admin(admin, user_id, user_in)
    user = update_user(session=session, user_id=user_id, user_in=user_in)
    audit(
        session,
        admin,
        "user.update",
        "user",
        user.id,
        request_id=request_id,
        fields=sorted(user_in.model_fields_set),
        changes=user_in.model_dump(mode="json", include=AUDITED_CHANGES, exclude_unset=True),
    )
    return user


# -- API keys ------------------------------------------------------------------------------------------------


def add_api_key(*, session: Session, admin: User, user_id: int, name: str, request_id: str | None = None) -> NewKey:
    """A new API key for user ``user_id`` (:class:`NotFound` if none); only its hash is kept."""
    new = new_api_key()
    key = create_api_key(session=session, user_id=user_id, name=name, prefix=new.prefix, key_hash=new.key_hash)
    audit(session, admin, "api_key.create", "api_key", key.id, request_id=request_id, user_id=user_id)
    return NewKey(api_key=key, key=new.key)


def read_api_keys(*, session: Session, admin: User, user_id: int, request_id: str | None = None) -> list[ApiKey]:
    """User ``user_id``'s API keys, oldest first, revoked ones included; :class:`NotFound` for no such user."""
    get_user(session=session, user_id=user_id)
    keys = list_api_keys(session=session, user_id=user_id)
    audit(session, admin, "api_key.list", "user", user_id, request_id=request_id, ids=ids(keys))
    return keys


def revoke_user_api_key(
    *, session: Session, admin: User, user_id: int, key_id: int, request_id: str | None = None
) -> ApiKey:
    """Revoke API key ``key_id`` of user ``user_id`` at once (kept, with ``revoked_at``, for the audit trail);
    revoking twice is harmless. :class:`NotFound` when either is missing or the key is another user's."""
    user_api_key(session, user_id, key_id)
    key = revoke_api_key(session=session, key_id=key_id)
    audit(session, admin, "api_key.revoke", "api_key", key.id, request_id=request_id, user_id=user_id)
    return key
