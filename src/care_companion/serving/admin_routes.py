"""The admin API: users, their API keys, and model promotion; thin routes over repos and the registry.

User routes need the ``manage_users`` permission, model routes ``manage_models`` (both: admins only). Every
call appends an audit row in the request's transaction with ids, roles and counts only: never a password or
an API key, which are shown once in the response that creates them and stored only as hashes. An admin
cannot disable or demote their own account, so the service never loses its last admin by accident.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from care_companion.config import Settings
from care_companion.errors import CareError, ConfigError, ModelError, RequestError, ServiceUnavailable
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
from care_companion.records.schemas import ApiKeyPublic, Page, UserCreate, UserPublic, UserUpdate
from care_companion.registry.models import ALIASES, VersionInfo, alias_version, list_versions, set_alias
from care_companion.security import (
    MIN_PASSWORD_LENGTH,
    Permission,
    Role,
    can,
    hash_password,
    new_api_key,
    new_password,
)
from care_companion.serving.auth import (
    AUTH_ERRORS,
    SessionDep,
    SettingsDep,
    audit,
    audit_briefly,
    require,
    require_briefly,
)
from care_companion.serving.manager import ModelManager
from care_companion.serving.records_routes import Limit, Offset
from care_companion.serving.routes import ModelsDep, model_info
from care_companion.serving.schemas import ErrorBody, LoadedModelInfo

log = logging.getLogger(__name__)

UserAdmin = Annotated[User, Depends(require(Permission.MANAGE_USERS))]
# Registry calls and model loading are slow: the caller is looked up, and the call audited, in short sessions
# of their own, so no database transaction is held meanwhile.
ModelAdmin = Annotated[User, Depends(require_briefly(Permission.MANAGE_MODELS))]

AUDITED_CHANGES = {"role", "department", "is_active"}  # values kept in the audit row; other fields by name only


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


USER_ERRORS: dict[int | str, dict[str, Any]] = {404: _error("No such user (or API key of that user).")}
CONFLICT: dict[int | str, dict[str, Any]] = {409: _error("The username is taken.")}
INVALID_USER: dict[int | str, dict[str, Any]] = {
    422: _error(
        f"A malformed body (e.g. an unknown role, a password under {MIN_PASSWORD_LENGTH} characters), "
        "or an admin disabling or demoting their own account (self_lockout)."
    )
}
MODEL_ERRORS: dict[int | str, dict[str, Any]] = {
    404: _error("A task this service does not serve, no registered model for it, or no such version."),
    422: _error("An unknown alias, or a malformed body."),
    503: _error("The model registry cannot be reached; retry later."),
}

admin_router = APIRouter(tags=["admin"], responses=AUTH_ERRORS)


# -- schemas only HTTP uses ----------------------------------------------------------------------------------


class UserCreated(UserPublic):
    """A new user; a generated password is shown this once."""

    password: str | None = Field(
        default=None, description="The generated password, shown this once; null when the caller chose one."
    )


class ApiKeyCreate(BaseModel):
    """A new API key for a user (a machine, usually)."""

    name: str = Field(min_length=1, max_length=100, description="What the key is for, e.g. the scanner's name.")


class ApiKeyCreated(ApiKeyPublic):
    """A new API key; the key itself is shown this once."""

    key: str = Field(description="The key, shown this once; send it as 'Authorization: Bearer <key>'.")


class AliasChange(BaseModel):
    """Point an alias at a version."""

    version: int = Field(ge=1, description="The registered version.")
    alias: str = Field(description=f"One of: {', '.join(ALIASES)}.")


class Promotion(BaseModel):
    """What an alias change did: the registry before and after, and what the service swapped in."""

    task: str
    alias: str
    version: int
    previous: int | None = Field(description="The version the alias pointed at before (null: none).")
    changes: dict[str, str] = Field(description="What the service did for the task (swapped, unchanged, kept).")
    models: list[LoadedModelInfo]


class ModelVersions(BaseModel):
    """A task's registered versions, oldest first, and the one the service serves now."""

    task: str
    serving: str | None = Field(description="The version served now (null: none, or a bundle folder).")
    data: list[VersionInfo]


# -- helpers (business rules the routes share) ---------------------------------------------------------------


def _ids(rows: list[Any]) -> list[int]:
    return [row.id for row in rows]


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


def served_task(models: ModelManager, task: str) -> str:
    """``task`` when this service serves it; :class:`NotFound` otherwise."""
    if task not in models.tasks:
        raise NotFound(f"unknown task {task!r}; this service serves: {', '.join(models.tasks)}")
    return task


@contextmanager
def registry_errors() -> Iterator[None]:
    """Registry failures as clear answers, never a 500: no such model or version 404, a bad alias 422, the
    registry itself failing 503."""
    try:
        yield
    except ModelError as exc:
        raise NotFound(exc.detail) from exc
    except ConfigError as exc:
        raise RequestError(exc.detail) from exc
    except CareError:
        raise
    except Exception as exc:
        log.warning("model registry call failed", exc_info=True)
        raise ServiceUnavailable(
            f"the model registry is unavailable ({type(exc).__name__}); retry later", code="registry_unavailable"
        ) from exc


def move_alias(task: str, change: AliasChange, settings: Settings) -> int | None:
    """Point ``change.alias`` of model ``task`` at ``change.version`` (blocking registry calls); returns the
    version it pointed at before (None: none)."""
    previous = alias_version(task, change.alias, settings)
    set_alias(task, change.version, change.alias, settings)
    return previous


# -- users ---------------------------------------------------------------------------------------------------


@admin_router.get("/v1/users", response_model=Page[UserPublic], summary="List users")
def find_users(
    session: SessionDep,
    admin: UserAdmin,
    request: Request,
    role: Role | None = None,
    department: Annotated[str | None, Query(max_length=100)] = None,
    offset: Offset = 0,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[UserPublic]:
    """Users by username, optionally of one role or department (no secrets)."""
    items, count = list_users(session=session, role=role, department=department, offset=offset, limit=limit)
    audit(session, admin, request, "user.list", "user", count=count, offset=offset, ids=_ids(items))
    return Page[UserPublic].of(items, count, offset=offset, limit=limit)


@admin_router.post(
    "/v1/users",
    status_code=201,
    response_model=UserCreated,
    responses={**CONFLICT, **INVALID_USER},
    summary="Add a user",
)
def add_user(body: UserCreate, session: SessionDep, admin: UserAdmin, request: Request) -> UserCreated:
    """Add a user; without a password one is generated and returned this once (only its argon2 hash is kept)."""
    password = body.password or new_password()
    user = create_user(session=session, user_in=body, password_hash=hash_password(password))
    generated = body.password is None
    audit(
        session,
        admin,
        request,
        "user.create",
        "user",
        user.id,
        role=user.role,
        department=user.department,
        generated_password=generated,
    )
    created = UserCreated.model_validate(user)
    created.password = password if generated else None
    return created


@admin_router.patch(
    "/v1/users/{user_id}",
    response_model=UserPublic,
    responses={**USER_ERRORS, **INVALID_USER},
    summary="Change or disable a user",
)
def change_user(user_id: int, body: UserUpdate, session: SessionDep, admin: UserAdmin, request: Request) -> User:
    """Change the fields sent; ``is_active: false`` disables the user, whose tokens and API keys stop working
    at once. Admins cannot disable or demote themselves."""
    check_keeps_admin(admin, user_id, body)
    user = update_user(session=session, user_id=user_id, user_in=body)
    audit(
        session,
        admin,
        request,
        "user.update",
        "user",
        user.id,
        fields=sorted(body.model_fields_set),
        changes=body.model_dump(mode="json", include=AUDITED_CHANGES, exclude_unset=True),
    )
    return user


# -- API keys ------------------------------------------------------------------------------------------------


@admin_router.post(
    "/v1/users/{user_id}/api-keys",
    status_code=201,
    response_model=ApiKeyCreated,
    responses=USER_ERRORS,
    summary="Give a user an API key",
)
def add_api_key(
    user_id: int, body: ApiKeyCreate, session: SessionDep, admin: UserAdmin, request: Request
) -> ApiKeyCreated:
    """A new API key for the user, shown this once (only its hash is kept)."""
    new = new_api_key()
    key = create_api_key(session=session, user_id=user_id, name=body.name, prefix=new.prefix, key_hash=new.key_hash)
    audit(session, admin, request, "api_key.create", "api_key", key.id, user_id=user_id)
    return ApiKeyCreated.model_validate({**ApiKeyPublic.model_validate(key).model_dump(), "key": new.key})


@admin_router.get(
    "/v1/users/{user_id}/api-keys",
    response_model=list[ApiKeyPublic],
    responses=USER_ERRORS,
    summary="A user's API keys",
)
def read_api_keys(user_id: int, session: SessionDep, admin: UserAdmin, request: Request) -> list[ApiKey]:
    """The user's API keys, oldest first, revoked ones included (no secrets)."""
    get_user(session=session, user_id=user_id)
    keys = list_api_keys(session=session, user_id=user_id)
    audit(session, admin, request, "api_key.list", "user", user_id, ids=_ids(keys))
    return keys


@admin_router.delete(
    "/v1/users/{user_id}/api-keys/{key_id}",
    response_model=ApiKeyPublic,
    responses=USER_ERRORS,
    summary="Revoke an API key",
)
def remove_api_key(user_id: int, key_id: int, session: SessionDep, admin: UserAdmin, request: Request) -> ApiKey:
    """Revoke the key at once (it is kept, with ``revoked_at``, for the audit trail); revoking twice is harmless."""
    user_api_key(session, user_id, key_id)
    key = revoke_api_key(session=session, key_id=key_id)
    audit(session, admin, request, "api_key.revoke", "api_key", key.id, user_id=user_id)
    return key


# -- models --------------------------------------------------------------------------------------------------


@admin_router.get(
    "/v1/admin/models/{task}/versions",
    response_model=ModelVersions,
    responses=MODEL_ERRORS,
    summary="A task's registered model versions",
)
def model_versions(
    task: str, models: ModelsDep, settings: SettingsDep, admin: ModelAdmin, request: Request
) -> ModelVersions:
    """Every registered version of the task's model with its aliases and test metrics, and the one served now.
    (A sync route: the registry calls run in a worker thread.)"""
    served_task(models, task)
    with registry_errors():
        versions = list_versions(task, settings)
    audit_briefly(admin, request, "model.versions", "model", task, count=len(versions))
    served = models.get(task)
    return ModelVersions(task=task, serving=served.source.version if served else None, data=versions)


@admin_router.post(
    "/v1/admin/models/{task}/aliases",
    response_model=Promotion,
    responses=MODEL_ERRORS,
    summary="Promote a model version (move an alias)",
)
async def promote(
    task: str,
    body: AliasChange,
    models: ModelsDep,
    settings: SettingsDep,
    admin: ModelAdmin,
    request: Request,
) -> Promotion:
    """Point an alias (staging, canary, production) at a version, then look the task's model up again, so a
    newly promoted version is served at once (requests in flight finish on the old one)."""
    served_task(models, task)
    with registry_errors():
        previous = await asyncio.to_thread(move_alias, task, body, settings)
    changes = await models.refresh((task,))
    detail = {"alias": body.alias, "version": body.version, "previous": previous, "change": changes.get(task)}
    await asyncio.to_thread(audit_briefly, admin, request, "model.promote", "model", task, **detail)
    return Promotion(
        task=task,
        alias=body.alias,
        version=body.version,
        previous=previous,
        changes=changes,
        models=[model_info(m) for m in models.loaded()],
    )
