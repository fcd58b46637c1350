"""Shared fixtures: real data location (skipped where absent) and isolated settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from care_companion.config import Settings
from care_companion.tasks import TaskSpec

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


def write_bundle(
    directory: Path,
    *,
    logits: list[float] | None = None,
    input_size: int = 64,
    thresholds: dict | None = None,
    task: TaskSpec | None = None,
    backbone: str = "resnet18",
) -> Path:
    """A real model bundle (random ``backbone`` exported to ONNX) for serving tests; a chest bundle by default.

    With ``logits`` the head ignores the image and always answers those logits, so a test can choose the
    outcome (e.g. the "unknown" class for the 422 path); without, the weights are random. Another ``task``
    (e.g. ``WRIST``) gives that task's model: multi-view for a task with several views.
    """
    import torch

    from care_companion.models.bundle import ONNX_FILE, BundleMeta, save_meta
    from care_companion.models.export import export_onnx
    from care_companion.models.factory import create_model
    from care_companion.tasks import CHEST

    task = task or CHEST
    torch.manual_seed(0)
    model, _ = create_model(task, backbone)
    if logits is not None:
        linear = model.head[1]
        with torch.no_grad():
            linear.weight.zero_()
            linear.bias.copy_(torch.tensor(logits))
    export_onnx(model, directory / ONNX_FILE, input_size=input_size)
    meta = BundleMeta.for_task(
        task,
        backbone=backbone,
        input_size=input_size,
        thresholds=thresholds or {"abnormal": 0.5, **dict.fromkeys(task.positives, 0.5)},
        dataset_version="v-test",
    )
    save_meta(directory, meta)
    return directory
