"""``care-companion db upgrade`` / ``db current`` on the embedded SQLite default, and the records helpers that need
no server."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from care_companion.cli.main import app
from care_companion.errors import ServiceUnavailable
from care_companion.records.db import current_revision, database_unavailable, head_revision, make_engine, safe_url
from care_companion.records.repos import MAX_LIMIT, _window
from care_companion.records.schemas import StudyCreate

runner = CliRunner()


def test_db_upgrade_then_current(cli_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CARE_DATABASE_URL", raising=False)
    before = runner.invoke(app, ["db", "current"])
    assert before.exit_code == 2, before.output
    assert "not migrated (at empty" in before.output and "care-companion db upgrade" in before.output

    upgraded = runner.invoke(app, ["db", "upgrade"])
    assert upgraded.exit_code == 0, upgraded.output
    assert f"at revision {head_revision()}" in upgraded.output
    assert (cli_env / "care.db").is_file()

    after = runner.invoke(app, ["db", "current"])
    assert after.exit_code == 0, after.output
    assert f"current: {head_revision()}  head: {head_revision()}" in after.output

    again = runner.invoke(app, ["db", "upgrade"])  # idempotent
    assert again.exit_code == 0, again.output


def test_db_commands_report_an_unreachable_server(cli_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARE_DATABASE_URL", "postgresql+psycopg://care:s3cret-pw@127.0.0.1:1/care")
    for command in (["db", "current"], ["db", "upgrade"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        assert "database_unavailable" in result.output and "s3cret-pw" not in result.output


def test_unreachable_database_becomes_service_unavailable_without_password() -> None:
    engine = make_engine("postgresql+psycopg://care:s3cret-pw@127.0.0.1:1/care")
    try:
        with pytest.raises(ServiceUnavailable) as info:
            current_revision(engine)
    finally:
        engine.dispose()
    assert info.value.code == "database_unavailable"
    assert "s3cret-pw" not in info.value.detail and "127.0.0.1" in info.value.detail


def test_helpers_hide_secrets() -> None:
    assert safe_url("postgresql+psycopg://u:pw@db:5432/care") == "postgresql+psycopg://u:***@db:5432/care"
    error = database_unavailable(RuntimeError("connect failed: password=hunter2 host=x"), url="postgresql://u:pw@h/d")
    assert "hunter2" not in error.detail and ":pw@" not in error.detail and error.code == "database_unavailable"


def test_sqlite_engine_creates_its_folder(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'a' / 'b' / 'care.db'}")
    try:
        assert current_revision(engine) is None
    finally:
        engine.dispose()
    assert (tmp_path / "a" / "b" / "care.db").is_file()


def test_study_body_part_defaults_to_the_task_and_limits_are_capped() -> None:
    assert StudyCreate(patient_id=1, task="wrist").body_part == "wrist"
    assert StudyCreate(patient_id=1, task="chest", body_part="ribs").body_part == "ribs"
    assert _window(-5, 10_000) == (0, MAX_LIMIT)
    assert _window(3, -1) == (3, 0)
