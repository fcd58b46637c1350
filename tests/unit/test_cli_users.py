"""``care-companion users create/list`` on the embedded SQLite database."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from care_companion.cli.main import app
from care_companion.config import get_settings
from care_companion.records.db import make_engine, session_factory
from care_companion.records.repos import get_api_key_by_prefix, get_user_by_username
from care_companion.security import api_key_matches, api_key_prefix, verify_password

runner = CliRunner()


def test_users_need_a_migrated_database(cli_env: Path) -> None:
    result = runner.invoke(app, ["users", "create", "--username", "root"])
    assert result.exit_code == 2 and "db upgrade" in result.output


def test_create_admin_with_generated_password_and_api_key(cli_env: Path) -> None:
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    result = runner.invoke(app, ["users", "create", "--username", "root", "--api-key"])
    assert result.exit_code == 0, result.output
    lines = {
        line.split(":", 1)[0].strip(): line.split(":", 1)[1].split()[0]
        for line in result.output.splitlines()
        if ":" in line
    }
    password, key = lines["password"], lines["API key"]
    engine = make_engine(get_settings().db_url)
    try:
        with session_factory(engine)() as session:
            user = get_user_by_username(session=session, username="root")
            assert user is not None and user.role == "admin" and user.department == "radiology"
            assert verify_password(user.password_hash, password) and not verify_password(user.password_hash, "nope")
            stored = get_api_key_by_prefix(session=session, prefix=api_key_prefix(key))
            assert stored is not None and stored.user_id == user.id and api_key_matches(key, stored.key_hash)
    finally:
        engine.dispose()

    again = runner.invoke(app, ["users", "create", "--username", "root"])
    assert again.exit_code == 2 and "root" in again.output  # a duplicate is a one-line error
    radiologist = runner.invoke(
        app, ["users", "create", "--username", "ana", "--role", "radiologist", "--password", "long-enough-pw"]
    )
    assert radiologist.exit_code == 0 and "password:" not in radiologist.output
    bad_role = runner.invoke(app, ["users", "create", "--username", "bob", "--role", "janitor"])
    assert bad_role.exit_code == 2 and "role" in bad_role.output
    listed = runner.invoke(app, ["users", "list"])
    assert listed.exit_code == 0 and "2 user(s)" in listed.output and "radiologist" in listed.output


def test_open_account_reset_gives_the_demo_admin_a_new_password(cli_env: Path) -> None:
    from care_companion.workflows.accounts import open_account

    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    settings = get_settings()
    first = open_account(settings, username="admin", role="admin", reset=True)
    second = open_account(settings, username="admin", role="admin", reset=True, api_key=True)
    assert first.created and not second.created and first.password != second.password
    engine = make_engine(settings.db_url)
    try:
        with session_factory(engine)() as session:
            user = get_user_by_username(session=session, username="admin")
            assert user is not None and verify_password(user.password_hash, second.password)
            assert not verify_password(user.password_hash, first.password)
    finally:
        engine.dispose()


def test_demo_serve_prints_an_admin_login_that_works(cli_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The serving step of `demo --serve`: the printed password signs in and the printed API key predicts.

    Training is replaced by a ready bundle (the demo's training is covered by the end-to-end CLI tests)."""
    from fastapi.testclient import TestClient

    from care_companion.registry.gate import GateResult
    from care_companion.serving.app import create_app
    from care_companion.workflows import demo
    from care_companion.workflows.training import TrainOutcome
    from tests.conftest import write_bundle

    bundle = write_bundle(cli_env.parent / "bundle", logits=[0.0, 3.0, 1.0, -2.0])
    outcome = TrainOutcome(
        task="chest", bundle_dir=bundle, run_id="r", dataset_version="v", registered_version=1,
        gate=GateResult(passed=True), metrics={}, train_seconds=1.0, images_per_second=1.0,
    )  # fmt: skip
    imported = demo.ImportResult(
        task="chest", version="v", n_images=0, counts={}, splits={}, manifest_key="m", report_key="r"
    )
    monkeypatch.setattr(demo, "run_demo", lambda *a, **k: (imported, outcome))
    from care_companion.tasks import WRIST

    wrist_bundle = write_bundle(cli_env.parent / "wrist-bundle", task=WRIST, logits=[0.0, 1.0, -3.0])
    wrist_outcome = outcome.model_copy(update={"task": "wrist", "bundle_dir": wrist_bundle})
    monkeypatch.setattr(demo, "run_wrist_demo", lambda *a, **k: (imported, wrist_outcome))
    served: dict[str, object] = {}

    class Service:  # stands in for the child `care-companion serve` the demo starts
        def poll(self) -> None:
            return None

        def wait(self, timeout: float | None = None) -> int:
            served["waited"] = True
            return 0

        def terminate(self) -> None:
            served["stopped"] = True

    def fake_start(cfg: object, **_: object) -> Service:
        served["settings"] = cfg
        return Service()

    announced: list[str] = []
    monkeypatch.setattr(demo, "start_service", fake_start)
    monkeypatch.setattr(demo, "wait_until_served", lambda cfg, task, **_: announced.append(task) or True)
    result = runner.invoke(app, ["demo", "--serve"])
    assert result.exit_code == 0, result.output
    assert announced == ["chest", "wrist"] and served.get("waited") and served.get("stopped")
    assert (
        "the service answers chest requests" in result.output and "the service answers wrist requests" in result.output
    )
    fields = {
        line.split(":", 1)[0].strip(): line.split(":", 1)[1].split()
        for line in result.output.splitlines()
        if line.startswith(("admin", "technician login", "radiologist login"))
    }
    username, _, password = fields["admin login"][:3]
    key = fields["admin API key"][0]
    assert f"Authorization: Bearer {key}" in result.output
    cfg = served["settings"].model_copy(  # type: ignore[attr-defined]
        update={"chest_model": str(bundle), "wrist_model": str(wrist_bundle), "model_poll_seconds": 0}
    )
    with TestClient(create_app(cfg)) as client:
        token = client.post("/v1/auth/token", data={"username": username, "password": password})
        assert token.status_code == 200 and token.json()["role"] == "admin"
        for role in ("technician", "radiologist"):  # the clinicians' logins work too, with their roles
            name, _, secret = fields[f"{role} login"][:3]
            signed = client.post("/v1/auth/token", data={"username": name, "password": secret})
            assert signed.status_code == 200 and signed.json()["role"] == role, signed.text
        example = Path(result.output.split("file=@")[1].split()[0])
        answer = client.post(
            "/v1/predict/chest",
            files={"file": ("x.png", example.read_bytes(), "image/png")},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert answer.status_code == 200, answer.text
        assert client.post("/v1/predict/chest", files={"file": ("x.png", b"x", "image/png")}).status_code == 401
        pa = Path(result.output.split("pa=@")[1].split()[0])
        lateral = Path(result.output.split("lateral=@")[1].split()[0])
        study = client.post(
            "/v1/predict/wrist",
            files={"pa": ("pa.png", pa.read_bytes(), "image/png"), "lateral": ("lat.png", lateral.read_bytes())},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert study.status_code == 200, study.text
        assert study.json()["views_used"] == ["pa", "lateral"]
        assert "/dashboard" in result.output and "/app" in result.output
        assert client.get("/app").status_code == 200
