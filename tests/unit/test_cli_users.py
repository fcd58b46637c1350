"""``care-companion users create/list`` on the embedded SQLite database."""

from __future__ import annotations

from pathlib import Path

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
