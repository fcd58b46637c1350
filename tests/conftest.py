"""Shared fixtures: real data location (skipped where absent) and isolated settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from care_companion.config import Settings

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, skipping the calling test with a clear reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available at {path} (../shared/data is only present on project machines)")
    return path


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings whose data dir, store and MLflow store all live in a fresh temporary folder."""
    return Settings(data_dir=tmp_path / "care-data", seed=7)


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the CLI's settings at a fresh data dir (environment + cleared settings cache)."""
    from care_companion.config import get_settings

    data_dir = tmp_path / "care-data"
    monkeypatch.setenv("CARE_DATA_DIR", str(data_dir))
    for name in ("MLFLOW_TRACKING_URI", "CARE_MLFLOW_TRACKING_URI", "CARE_OBJECT_STORE"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield data_dir
    get_settings.cache_clear()
