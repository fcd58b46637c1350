"""Start-up against the records database: refuse an unmigrated one, give up on an unreachable one in time."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from care_companion.config import Settings
from care_companion.errors import ConfigError, ServiceUnavailable
from care_companion.serving.app import create_app


def test_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, model_poll_seconds=0)
    with pytest.raises(ConfigError, match=r"not migrated.*db upgrade"), TestClient(create_app(settings)):
        pass


def test_waits_for_an_unreachable_database_then_gives_up(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        model_poll_seconds=0,
        database_url="postgresql+psycopg://care:secret-pw@127.0.0.1:1/care",
        db_wait_seconds=1.5,
    )
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable) as info, TestClient(create_app(settings)):
        pass
    assert time.monotonic() - started >= 1.5
    assert info.value.code == "database_unavailable" and "secret-pw" not in info.value.detail
