"""The admin API: users, their API keys, and model promotion; thin routes over :mod:`care_companion.access.accounts`
and :mod:`care_companion.registry.promotion`.

User routes need the ``manage_users`` permission, model routes ``manage_models`` (both: admins only). Every
call appends an audit row in the request's transaction with ids, roles and counts only: never a password or
an API key, which are shown once in the response that creates them and stored only as hashes. An admin
cannot disable or demote their own account, so the service never loses its last admin by accident.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from care_companion.access import accounts
from care_companion.records.models import ApiKey, User
from care_companion.records.repos import DEFAULT_LIMIT
from care_companion.records.schemas import ApiKeyPublic, Page, UserCreate, UserPublic, UserUpdate
from care_companion.registry.promotion import move_alias, registered_versions, served_task
from care_companion.security import MIN_PASSWORD_LENGTH, Role
from care_companion.serving.deps import (
    ModelAdmin,
    ModelsDep,
    RequestId,
    SessionDep,
    SettingsDep,
    UserAdmin,
    audit_briefly,
)
from care_companion.serving.records_routes import Limit, Offset
from care_companion.serving.routes import model_info
from care_companion.serving.schemas import (
    AUTH_ERRORS,
    AliasChange,
    ApiKeyCreate,
    ApiKeyCreated,
    ModelVersions,
    Promotion,
    UserCreated,
    error_doc,
)

USER_ERRORS: dict[int | str, dict[str, Any]] = {404: error_doc("No such user (or API key of that user).")}
CONFLICT: dict[int | str, dict[str, Any]] = {409: error_doc("The username is taken.")}
INVALID_USER: dict[int | str, dict[str, Any]] = {
    422: error_doc(
        f"A malformed body (e.g. an unknown role, a password under {MIN_PASSWORD_LENGTH} characters), "
        "or an admin disabling or demoting their own account (self_lockout)."
    )
}
MODEL_ERRORS: dict[int | str, dict[str, Any]] = {
    404: error_doc("A task this service does not serve, no registered model for it, or no such version."),
    422: error_doc("An unknown alias, or a malformed body."),
    503: error_doc("The model registry cannot be reached; retry later."),
}

admin_router = APIRouter(tags=["admin"], responses=AUTH_ERRORS)


# -- users ---------------------------------------------------------------------------------------------------


@admin_router.get("/v1/users", response_model=Page[UserPublic], summary="List users")
def find_users(
    session: SessionDep,
    admin: UserAdmin,
    request_id: RequestId,
    role: Role | None = None,
    department: Annotated[str | None, Query(max_length=100)] = None,
    offset: Offset = 0,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[UserPublic]:
    """Users by username, optionally of one role or department (no secrets)."""
    items, count = accounts.find_users(
        session=session,
        admin=admin,
        role=role,
        department=department,
        offset=offset,
        limit=limit,
        request_id=request_id,
    )
    return Page[UserPublic].of(items, count, offset=offset, limit=limit)


@admin_router.post(
    "/v1/users",
    status_code=201,
    response_model=UserCreated,
    responses={**CONFLICT, **INVALID_USER},
    summary="Add a user",
)
def add_user(body: UserCreate, session: SessionDep, admin: UserAdmin, request_id: RequestId) -> UserCreated:
    """Add a user; without a password one is generated and returned this once (only its argon2 hash is kept)."""
    new = accounts.add_user(session=session, admin=admin, user_in=body, request_id=request_id)
    created = UserCreated.model_validate(new.user)
    created.password = new.password
    return created


@admin_router.patch(
    "/v1/users/{user_id}",
    response_model=UserPublic,
    responses={**USER_ERRORS, **INVALID_USER},
    summary="Change or disable a user",
)
def change_user(user_id: int, body: UserUpdate, session: SessionDep, admin: UserAdmin, request_id: RequestId) -> User:
    """Change the fields sent; ``is_active: false`` disables the user, whose tokens and API keys stop working
    at once. Admins cannot disable or demote themselves."""
    return accounts.change_user(session=session, admin=admin, user_id=user_id, user_in=body, request_id=request_id)


# -- API keys ------------------------------------------------------------------------------------------------


@admin_router.post(
    "/v1/users/{user_id}/api-keys",
    status_code=201,
    response_model=ApiKeyCreated,
    responses=USER_ERRORS,
    summary="Give a user an API key",
)
def add_api_key(
    user_id: int, body: ApiKeyCreate, session: SessionDep, admin: UserAdmin, request_id: RequestId
) -> ApiKeyCreated:
    """A new API key for the user, shown this once (only its hash is kept)."""
    new = accounts.add_api_key(session=session, admin=admin, user_id=user_id, name=body.name, request_id=request_id)
    return ApiKeyCreated.model_validate({**ApiKeyPublic.model_validate(new.api_key).model_dump(), "key": new.key})


@admin_router.get(
    "/v1/users/{user_id}/api-keys",
    response_model=list[ApiKeyPublic],
    responses=USER_ERRORS,
    summary="A user's API keys",
)
def read_api_keys(user_id: int, session: SessionDep, admin: UserAdmin, request_id: RequestId) -> list[ApiKey]:
    """The user's API keys, oldest first, revoked ones included (no secrets)."""
    return accounts.read_api_keys(session=session, admin=admin, user_id=user_id, request_id=request_id)


@admin_router.delete(
    "/v1/users/{user_id}/api-keys/{key_id}",
    response_model=ApiKeyPublic,
    responses=USER_ERRORS,
    summary="Revoke an API key",
)
def remove_api_key(user_id: int, key_id: int, session: SessionDep, admin: UserAdmin, request_id: RequestId) -> ApiKey:
    """Revoke the key at once (it is kept, with ``revoked_at``, for the audit trail); revoking twice is harmless."""
    return accounts.revoke_user_api_key(
        session=session, admin=admin, user_id=user_id, key_id=key_id, request_id=request_id
    )


# -- models --------------------------------------------------------------------------------------------------
# Registry calls and model loading are slow: the caller is looked up, and the call audited, in short sessions
# of their own (``ModelAdmin``, ``audit_briefly``), so no database transaction is held meanwhile.


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
    served_task(task, models.tasks)
    versions = registered_versions(task, settings)
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
    served_task(task, models.tasks)
    previous = await asyncio.to_thread(move_alias, task, body.version, body.alias, settings)
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
