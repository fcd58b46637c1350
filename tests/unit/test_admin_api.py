"""The admin API: users, API keys and model promotion, behind the admin role, audited without secrets.

User and API key routes run on one service (``service_client``) shared by the module: every test makes its own
users, so none depends on another's writes. Model routes run on a second service that serves the real local
MLflow registry (v1 answers normal, v2 pneumonia), marked ``integration``.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from care_companion.config import Settings
from care_companion.models.bundle import load_meta, save_meta
from care_companion.records.models import AuditLog
from care_companion.records.repos import create_api_key, get_user_by_username
from care_companion.records.schemas import AuditPublic, UserCreate
from care_companion.registry.models import register_bundle, set_alias
from care_companion.registry.tracking import start_run, tracking_client
from care_companion.security import MIN_PASSWORD_LENGTH, new_api_key
from care_companion.serving.app import create_app
from tests.conftest import write_bundle
from tests.helpers import migrated, seed_users, service_client, tokens_for
from tests.unit.test_service_api import png_bytes

ADMIN = ("boss", "admin", "")
TECH = ("tech", "technician", "er")
RAD = ("rad", "radiologist", "er")
TARGET = ("target", "technician", "er")  # the user the role matrix acts on
USERS = (ADMIN, TECH, RAD, TARGET)
CALLERS = [None, "tech", "rad", "boss"]
CHOSEN_PASSWORD = "a chosen passphrase"


@dataclass
class Api:
    """A running service with the users of ``USERS`` and one API key of ``target``."""

    client: TestClient
    settings: Settings
    sessions: sessionmaker[Session]
    tokens: dict[str, str]
    target_key_id: int

    def call(self, who: str | None, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        """A request as ``who`` (a username with a token, or a raw ``cc_`` API key), or anonymous (None)."""
        headers = {}
        if who is not None:
            headers["Authorization"] = f"Bearer {self.tokens.get(who, who)}"
        return self.client.request(method, path, headers=headers, json=body, **kwargs)

    def user_id(self, username: str) -> int:
        with self.sessions() as session:
            user = get_user_by_username(session=session, username=username)
            assert user is not None
            return user.id

    def password_hash(self, username: str) -> str | None:
        with self.sessions() as session:
            user = get_user_by_username(session=session, username=username)
            assert user is not None
            return user.password_hash

    def audit_rows(self, *actions: str) -> list[dict[str, Any]]:
        with self.sessions() as session:
            rows = session.scalars(select(AuditLog).order_by(AuditLog.id))
            dumped = [AuditPublic.model_validate(row).model_dump(mode="json") for row in rows]
        return [row for row in dumped if not actions or row["action"] in actions]


def _start(client: TestClient, users: tuple[tuple[str, str, str], ...]) -> tuple[Settings, Any, dict[str, str]]:
    app: Any = client.app
    with app.state.sessions.begin() as session:
        seed_users(session, users)
    return app.state.settings, app.state.sessions, tokens_for(app.state.settings, users)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with service_client(tmp_path_factory.mktemp("admin-api"), login=False, orphan_sweep_seconds=0) as client:
        settings, sessions, tokens = _start(client, USERS)
        key = new_api_key()
        with sessions.begin() as session:
            target = get_user_by_username(session=session, username="target")
            assert target is not None
            row = create_api_key(
                session=session, user_id=target.id, name="ct", prefix=key.prefix, key_hash=key.key_hash
            )
        yield Api(client, settings, sessions, tokens, row.id)


def new_user(api: Api, username: str, **fields: Any) -> dict[str, Any]:
    """Create a user through the API as the admin (a technician in "er" unless ``fields`` say otherwise)."""
    body = {"username": username, "full_name": username.title(), "role": "technician", "department": "er", **fields}
    response = api.call("boss", "POST", "/v1/users", body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def login(api: Api, username: str, password: str) -> Any:
    return api.client.post("/v1/auth/token", data={"username": username, "password": password})


def me(api: Api, credential: str) -> Any:
    return api.client.get("/v1/auth/me", headers={"Authorization": f"Bearer {credential}"})


# -- the role matrix -----------------------------------------------------------------------------------------

USER_ENDPOINTS: list[tuple[str, str, Any, int]] = [
    # method, path ({target}, {key} filled in), JSON body, status for the admin
    ("GET", "/v1/users", None, 200),
    ("POST", "/v1/users", {"username": "matrix-made", "full_name": "M", "role": "technician"}, 201),
    ("PATCH", "/v1/users/{target}", {"department": "er"}, 200),
    ("POST", "/v1/users/{target}/api-keys", {"name": "matrix"}, 201),
    ("GET", "/v1/users/{target}/api-keys", None, 200),
    ("DELETE", "/v1/users/{target}/api-keys/{key}", None, 200),
]


@pytest.mark.parametrize("caller", CALLERS, ids=lambda c: c or "anonymous")
@pytest.mark.parametrize(
    ("method", "path", "body", "allowed"), USER_ENDPOINTS, ids=[f"{m} {p}" for m, p, *_ in USER_ENDPOINTS]
)
def test_user_endpoints_role_matrix(
    api: Api, caller: str | None, method: str, path: str, body: Any, allowed: int
) -> None:
    before = len(api.audit_rows())
    url = path.format(target=api.user_id("target"), key=api.target_key_id)
    response = api.call(caller, method, url, body)
    if caller is None:
        assert response.status_code == 401 and response.json()["error"] == "unauthorized"
    elif caller != "boss":
        assert response.status_code == 403 and response.json()["error"] == "forbidden"
        assert "manage_users" in response.json()["detail"]
    else:
        assert response.status_code == allowed, response.text
    assert len(api.audit_rows()) - before == (1 if caller == "boss" else 0)  # one audit row per admin call


def test_a_technicians_api_key_is_refused_too(api: Api) -> None:
    key = api.call("boss", "POST", f"/v1/users/{api.user_id('tech')}/api-keys", {"name": "bot"}).json()["key"]
    assert api.call(key, "GET", "/v1/users").status_code == 403


# -- users ---------------------------------------------------------------------------------------------------


def test_a_created_user_signs_in_with_the_password_shown_once(api: Api) -> None:
    created = new_user(api, "newrad", role="radiologist", specialties=["chest"])
    password = created.pop("password")
    assert isinstance(password, str) and len(password) >= MIN_PASSWORD_LENGTH
    assert created["role"] == "radiologist" and created["department"] == "er" and created["specialties"] == ["chest"]
    assert created["is_active"] is True and "password_hash" not in created
    stored = api.password_hash("newrad")
    assert stored is not None and stored.startswith("$argon2id$") and password not in stored

    token = login(api, "newrad", password)
    assert token.status_code == 200, token.text
    assert token.json()["role"] == "radiologist"
    assert me(api, token.json()["access_token"]).json()["username"] == "newrad"
    listed = api.call("boss", "GET", "/v1/users", params={"role": "radiologist"}).json()
    assert "newrad" in [u["username"] for u in listed["data"]]
    assert all("password" not in user for user in listed["data"])


def test_a_chosen_password_is_not_echoed(api: Api) -> None:
    created = new_user(api, "chooser", password=CHOSEN_PASSWORD)
    assert created["password"] is None
    assert login(api, "chooser", CHOSEN_PASSWORD).status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "error", "says"),
    [
        ({"username": "boss", "full_name": "Again", "role": "admin"}, 409, "conflict", "boss"),
        ({"username": "janitor", "full_name": "J", "role": "janitor"}, 422, "invalid_request", "role"),
        (
            {"username": "shorty", "full_name": "S", "role": "technician", "password": "short"},
            422,
            "invalid_request",
            "password",
        ),
        ({"username": "", "full_name": "S", "role": "technician"}, 422, "invalid_request", "username"),
    ],
    ids=["taken", "bad-role", "short-password", "no-username"],
)
def test_bad_new_users_are_refused(api: Api, body: dict[str, Any], status: int, error: str, says: str) -> None:
    response = api.call("boss", "POST", "/v1/users", body)
    assert response.status_code == status and response.json()["error"] == error, response.text
    assert says in response.json()["detail"]


def test_the_cli_and_the_api_share_the_password_rule() -> None:
    with pytest.raises(ValueError, match=str(MIN_PASSWORD_LENGTH)):
        UserCreate(username="x", full_name="X", role="technician", password="x" * (MIN_PASSWORD_LENGTH - 1))
    assert UserCreate(username="x", full_name="X", role="technician", password="x" * MIN_PASSWORD_LENGTH).password


def test_users_are_listed_by_role_and_department_a_page_at_a_time(api: Api) -> None:
    for name, department in (("pager-a", "pagers"), ("pager-b", "pagers"), ("pager-c", "elsewhere")):
        new_user(api, name, department=department)
    page = api.call("boss", "GET", "/v1/users", params={"department": "pagers", "limit": 1, "offset": 1}).json()
    assert (page["count"], page["offset"], page["limit"]) == (2, 1, 1)
    assert [u["username"] for u in page["data"]] == ["pager-b"]
    admins = api.call("boss", "GET", "/v1/users", params={"role": "admin"}).json()
    assert [u["username"] for u in admins["data"]] == ["boss"]
    assert api.call("boss", "GET", "/v1/users", params={"role": "janitor"}).status_code == 422


def test_patch_changes_only_the_fields_sent(api: Api) -> None:
    user_id = new_user(api, "mover", specialties=["wrist"])["id"]
    changed = api.call("boss", "PATCH", f"/v1/users/{user_id}", {"role": "radiologist", "department": "icu"})
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert (body["role"], body["department"], body["specialties"], body["full_name"]) == (
        "radiologist",
        "icu",
        ["wrist"],
        "Mover",
    )
    null = api.call("boss", "PATCH", f"/v1/users/{user_id}", {"role": None})
    assert null.status_code == 422 and "may not be null" in null.json()["detail"]
    assert api.call("boss", "PATCH", f"/v1/users/{user_id}", {"role": "janitor"}).status_code == 422
    missing = api.call("boss", "PATCH", "/v1/users/99999", {"department": "icu"})
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    [row] = [r for r in api.audit_rows("user.update") if r["resource_id"] == str(user_id)]
    assert row["detail"] == {"fields": ["department", "role"], "changes": {"department": "icu", "role": "radiologist"}}


def test_disabling_a_user_stops_their_token_and_api_keys_at_once(api: Api) -> None:
    leaver = ("leaver", "technician", "er")
    _, _, tokens = _start(api.client, (leaver,))
    user_id = api.user_id("leaver")
    key = api.call("boss", "POST", f"/v1/users/{user_id}/api-keys", {"name": "bot"}).json()["key"]
    assert me(api, tokens["leaver"]).status_code == 200 and me(api, key).status_code == 200

    disabled = api.call("boss", "PATCH", f"/v1/users/{user_id}", {"is_active": False})
    assert disabled.status_code == 200 and disabled.json()["is_active"] is False
    assert me(api, tokens["leaver"]).json()["error"] == "invalid_token"
    assert me(api, key).status_code == 401
    assert api.call("boss", "PATCH", f"/v1/users/{user_id}", {"is_active": True}).status_code == 200
    assert me(api, tokens["leaver"]).status_code == 200


def test_an_admin_cannot_disable_or_demote_themselves(api: Api) -> None:
    own = f"/v1/users/{api.user_id('boss')}"
    for change in ({"is_active": False}, {"role": "radiologist"}, {"role": "technician", "full_name": "Ex Boss"}):
        response = api.call("boss", "PATCH", own, change)
        assert response.status_code == 422 and response.json()["error"] == "self_lockout", change
        assert "your own account" in response.json()["detail"] and "another admin" in response.json()["detail"]
    assert api.call("boss", "GET", "/v1/users").status_code == 200  # still an admin
    renamed = api.call("boss", "PATCH", own, {"full_name": "The Boss", "role": "admin", "is_active": True})
    assert renamed.status_code == 200 and renamed.json()["full_name"] == "The Boss"
    other_admin = new_user(api, "deputy", role="admin")["id"]
    assert api.call("boss", "PATCH", f"/v1/users/{other_admin}", {"role": "technician"}).status_code == 200


# -- API keys ------------------------------------------------------------------------------------------------


def test_an_api_key_is_shown_once_signs_in_and_stops_when_revoked(api: Api) -> None:
    user_id = new_user(api, "scanner")["id"]
    created = api.call("boss", "POST", f"/v1/users/{user_id}/api-keys", {"name": "ct-1"})
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    assert key.startswith(f"cc_{created.json()['prefix']}_") and created.json()["revoked_at"] is None
    assert me(api, key).json()["username"] == "scanner"

    listed = api.call("boss", "GET", f"/v1/users/{user_id}/api-keys").json()
    assert [(k["id"], k["name"]) for k in listed] == [(created.json()["id"], "ct-1")]
    assert key not in json.dumps(listed) and "key_hash" not in listed[0]

    path = f"/v1/users/{user_id}/api-keys/{created.json()['id']}"
    revoked = api.call("boss", "DELETE", path)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert me(api, key).status_code == 401 and me(api, key).json()["error"] == "invalid_api_key"
    again = api.call("boss", "DELETE", path)
    assert again.status_code == 200 and again.json()["revoked_at"] == revoked.json()["revoked_at"]


def test_api_keys_of_missing_users_or_of_another_user_are_404(api: Api) -> None:
    other = api.user_id("tech")
    for method, path in (
        ("GET", "/v1/users/99999/api-keys"),
        ("POST", "/v1/users/99999/api-keys"),
        ("DELETE", f"/v1/users/{other}/api-keys/{api.target_key_id}"),  # target's key, under tech
        ("DELETE", f"/v1/users/{other}/api-keys/99999"),
    ):
        response = api.call("boss", method, path, {"name": "x"} if method == "POST" else None)
        assert response.status_code == 404 and response.json()["error"] == "not_found", path
    assert api.call("boss", "POST", f"/v1/users/{other}/api-keys", {"name": ""}).status_code == 422


# -- the audit trail -----------------------------------------------------------------------------------------


def test_admin_actions_are_audited_by_id_without_secrets(api: Api) -> None:
    created = new_user(api, "audited")
    password, user_id = created["password"], created["id"]
    chosen = new_user(api, "audited-2", password=CHOSEN_PASSWORD)["id"]
    api.call("boss", "PATCH", f"/v1/users/{user_id}", {"is_active": False})
    key = api.call("boss", "POST", f"/v1/users/{user_id}/api-keys", {"name": "k"}).json()
    api.call("boss", "DELETE", f"/v1/users/{user_id}/api-keys/{key['id']}")

    rows = api.audit_rows()
    mine = [
        (r["action"], r["resource_type"], r["resource_id"], r["username"])
        for r in rows
        if (r["resource_type"], r["resource_id"])
        in {("user", str(user_id)), ("user", str(chosen)), ("api_key", str(key["id"]))}
    ]
    assert mine == [
        ("user.create", "user", str(user_id), "boss"),
        ("user.create", "user", str(chosen), "boss"),
        ("user.update", "user", str(user_id), "boss"),
        ("api_key.create", "api_key", str(key["id"]), "boss"),
        ("api_key.revoke", "api_key", str(key["id"]), "boss"),
    ]
    creates = {r["resource_id"]: r["detail"] for r in rows if r["action"] == "user.create"}
    assert creates[str(user_id)] == {"role": "technician", "department": "er", "generated_password": True}
    assert creates[str(chosen)]["generated_password"] is False
    everything = json.dumps(rows)
    for secret in (password, CHOSEN_PASSWORD, key["key"], key["key"].rsplit("_", 1)[1]):
        assert secret not in everything


# -- registry outages ----------------------------------------------------------------------------------------


def test_unknown_task_or_unregistered_model_is_404_and_a_registry_failure_503(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    unknown = api.call("boss", "GET", "/v1/admin/models/knee/versions")
    assert unknown.status_code == 404 and "knee" in unknown.json()["detail"]
    unregistered = api.call("boss", "GET", "/v1/admin/models/wrist/versions")
    assert unregistered.status_code == 404 and "no registered model 'wrist'" in unregistered.json()["detail"]

    def down(*_: Any, **__: Any) -> None:
        raise ConnectionError("registry host unreachable")

    monkeypatch.setattr("care_companion.registry.promotion.list_versions", down)
    monkeypatch.setattr("care_companion.registry.promotion.alias_version", down)
    for method, path, body in (
        ("GET", "/v1/admin/models/chest/versions", None),
        ("POST", "/v1/admin/models/chest/aliases", {"version": 1, "alias": "canary"}),
    ):
        response = api.call("boss", method, path, body)
        assert response.status_code == 503 and response.json()["error"] == "registry_unavailable", response.text
        assert "ConnectionError" in response.json()["detail"]


# -- model promotion on a real registry ----------------------------------------------------------------------

LABEL_OF = {1: "normal", 2: "pneumonia"}
AUROC_OF = {1: 0.91, 2: 0.95}


@pytest.fixture(scope="module")
def registry_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """A service following ``chest@production`` (falling back to staging) on a local MLflow registry holding
    v1 (normal, staging) and v2 (pneumonia, no alias)."""
    root = tmp_path_factory.mktemp("admin-registry")
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith(("CARE_", "MLFLOW_")):
                mp.delenv(name)
        settings = Settings(
            data_dir=root / "care-data",
            chest_model=None,
            serve_alias="production",
            serve_fallback_alias="staging",
            model_poll_seconds=0,
            orphan_sweep_seconds=0,
        )
        for version, logits in ((1, [3.0, 0.0, 0.0, -2.0]), (2, [0.0, 3.0, 1.0, -2.0])):
            bundle = write_bundle(root / LABEL_OF[version], logits=logits)
            meta = load_meta(bundle)
            save_meta(bundle, meta.model_copy(update={"metrics": {"auroc": AUROC_OF[version]}}))
            with start_run(settings, "chest", LABEL_OF[version], {"task": "chest"}) as run:
                assert register_bundle(bundle, task="chest", run_id=run.run_id, settings=settings) == version
        set_alias("chest", 1, "staging", settings)
        with TestClient(create_app(migrated(settings))) as client:
            _, sessions, tokens = _start(client, (ADMIN, TECH, RAD))
            yield Api(client, settings, sessions, tokens, 0)


def predict(api: Api) -> dict[str, Any]:
    files = {"file": ("x.png", png_bytes(), "image/png")}
    response = api.client.post(
        "/v1/predict/chest", files=files, headers={"Authorization": f"Bearer {api.tokens['boss']}"}
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def clear_production(api: Api) -> None:
    client = tracking_client(api.settings)
    if "production" in (client.get_registered_model("chest").aliases or {}):
        client.delete_registered_model_alias("chest", "production")
    assert api.call("boss", "POST", "/v1/admin/reload").status_code == 200


MODEL_ENDPOINTS: list[tuple[str, str, Any]] = [
    ("GET", "/v1/admin/models/chest/versions", None),
    ("POST", "/v1/admin/models/chest/aliases", {"version": 2, "alias": "canary"}),  # not served: no swap
]


@pytest.mark.integration
@pytest.mark.parametrize("caller", CALLERS, ids=lambda c: c or "anonymous")
@pytest.mark.parametrize(("method", "path", "body"), MODEL_ENDPOINTS, ids=[f"{m} {p}" for m, p, _ in MODEL_ENDPOINTS])
def test_model_endpoints_role_matrix(registry_api: Api, caller: str | None, method: str, path: str, body: Any) -> None:
    before = len(registry_api.audit_rows())
    response = registry_api.call(caller, method, path, body)
    if caller is None:
        assert response.status_code == 401 and response.json()["error"] == "unauthorized"
    elif caller != "boss":
        assert response.status_code == 403 and "manage_models" in response.json()["detail"]
    else:
        assert response.status_code == 200, response.text
    assert len(registry_api.audit_rows()) - before == (1 if caller == "boss" else 0)


@pytest.mark.integration
def test_versions_list_aliases_metrics_and_what_is_served(registry_api: Api) -> None:
    clear_production(registry_api)
    response = registry_api.call("boss", "GET", "/v1/admin/models/chest/versions")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["task"] == "chest" and body["serving"] == "1"
    assert [v["version"] for v in body["data"]] == [1, 2]
    assert "staging" in body["data"][0]["aliases"] and "production" not in body["data"][1]["aliases"]
    assert [v["metrics"]["auroc"] for v in body["data"]] == [AUROC_OF[1], AUROC_OF[2]]


@pytest.mark.integration
def test_promotion_to_production_swaps_the_served_model(registry_api: Api) -> None:
    clear_production(registry_api)
    before = predict(registry_api)
    assert before["label"] == "normal" and before["model"]["version"] == "1" and before["model"]["alias"] == "staging"

    promoted = registry_api.call(
        "boss", "POST", "/v1/admin/models/chest/aliases", {"version": 2, "alias": "production"}
    )
    assert promoted.status_code == 200, promoted.text
    body = promoted.json()
    assert (body["task"], body["alias"], body["version"], body["previous"]) == ("chest", "production", 2, None)
    assert body["changes"] == {"chest": "swapped models:/chest/1 -> models:/chest/2"}
    assert [(m["version"], m["alias"]) for m in body["models"]] == [("2", "production")]

    after = predict(registry_api)
    assert (
        after["label"] == "pneumonia" and after["model"]["version"] == "2" and after["model"]["alias"] == "production"
    )
    back = registry_api.call("boss", "POST", "/v1/admin/models/chest/aliases", {"version": 1, "alias": "production"})
    assert back.json()["previous"] == 2 and predict(registry_api)["label"] == "normal"

    rows = registry_api.audit_rows("model.promote")
    assert [(r["resource_type"], r["resource_id"], r["username"]) for r in rows[-2:]] == [
        ("model", "chest", "boss")
    ] * 2
    assert {k: rows[-2]["detail"][k] for k in ("alias", "version", "previous")} == {
        "alias": "production",
        "version": 2,
        "previous": None,
    }


@pytest.mark.integration
@pytest.mark.parametrize(
    ("task", "body", "status", "says"),
    [
        ("chest", {"version": 99, "alias": "production"}, 404, "has no version 99"),
        ("wrist", {"version": 1, "alias": "production"}, 404, "no registered model 'wrist'"),
        ("knee", {"version": 1, "alias": "production"}, 404, "unknown task 'knee'"),
        ("chest", {"version": 1, "alias": "gold"}, 422, "staging, canary, production"),
        ("chest", {"version": 0, "alias": "staging"}, 422, "version"),
        ("chest", {"version": "two", "alias": "staging"}, 422, "version"),
    ],
    ids=["no-version", "no-model", "unknown-task", "bad-alias", "version-0", "version-text"],
)
def test_bad_promotions_are_clear_4xx(registry_api: Api, task: str, body: Any, status: int, says: str) -> None:
    served = predict(registry_api)["model"]
    response = registry_api.call("boss", "POST", f"/v1/admin/models/{task}/aliases", body)
    assert response.status_code == status, response.text
    assert says in response.json()["detail"]
    assert predict(registry_api)["model"] == served  # nothing moved


@pytest.mark.integration
@pytest.mark.parametrize(
    ("path", "body"),
    [("/v1/admin/reload", None), ("/v1/admin/models/chest/aliases", {"version": 1, "alias": "canary"})],
    ids=["reload", "promote"],
)
def test_loading_models_holds_no_database_transaction(
    registry_api: Api, monkeypatch: pytest.MonkeyPatch, path: str, body: Any
) -> None:
    """On SQLite an open request transaction holds the write lock (BEGIN IMMEDIATE): model loading, which can
    take seconds, must not stall every prediction that stores its image meanwhile."""
    models: Any = registry_api.client.app.state.models  # type: ignore[attr-defined]
    refresh = models.refresh
    writable: list[bool] = []

    async def refresh_while_writing(*args: Any, **kwargs: Any) -> dict[str, str]:
        database = registry_api.settings.db_url.removeprefix("sqlite:///")
        other = sqlite3.connect(database, timeout=0.2, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
            writable.append(True)
        except sqlite3.OperationalError:
            writable.append(False)
        finally:
            other.close()
        return dict(await refresh(*args, **kwargs))

    monkeypatch.setattr(models, "refresh", refresh_while_writing)
    response = registry_api.call("boss", "POST", path, body)
    assert response.status_code == 200, response.text
    assert writable == [True], "the database was locked while the models were being looked up and loaded"
