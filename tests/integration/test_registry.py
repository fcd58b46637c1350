"""Tracking and the model registry on a real embedded MLflow store (SQLite + local artifacts in a temp dir).

One store serves the whole module: creating MLflow's SQLite schema takes several seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from care_companion.config import Settings
from care_companion.errors import ConfigError, ModelError
from care_companion.models.bundle import BUNDLE_FILE, ONNX_FILE, BundleMeta, load_meta, save_meta
from care_companion.registry import models as registry
from care_companion.registry.models import list_versions, register_bundle, resolve_bundle, set_alias
from care_companion.registry.tracking import (
    GIT_COMMIT_TAG,
    configure_mlflow,
    get_or_create_experiment,
    git_commit,
    start_run,
    tracking_client,
)
from care_companion.tasks import CHEST

METRICS = {
    "auc_abnormal": 0.97,
    "sensitivity_abnormal": 0.96,
    "specificity_abnormal": 0.81,
    "pneumonia_sensitivity": 0.955,
    "tuberculosis_sensitivity": 0.99,
    "ece": 0.02,
}


def make_bundle(directory: Path, *, onnx: bytes = b"\x08\x07fake-onnx", **metrics: float) -> Path:
    """A fake but well-formed bundle folder: dummy model.onnx bytes and a valid bundle.json."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ONNX_FILE).write_bytes(onnx)
    meta = BundleMeta.for_task(
        CHEST, backbone="resnet18", input_size=64, dataset_version="ds-1", metrics=METRICS | metrics
    )
    save_meta(directory, meta)
    return directory


@pytest.fixture(scope="module")
def reg_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings on a fresh embedded MLflow store shared by the module (schema created once)."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
            mp.delenv(name, raising=False)
        yield Settings(data_dir=tmp_path_factory.mktemp("registry") / "care-data", seed=7)


@pytest.fixture(scope="module")
def registered(reg_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two versions of 'chest': v1 logged by register_bundle, v2 from a run that had already logged its bundle."""
    work = tmp_path_factory.mktemp("bundles")
    first = make_bundle(work / "first", onnx=b"first-model")
    with start_run(reg_settings, "chest", "first", {"task": "chest"}) as run:
        run1 = run.run_id
        v1 = register_bundle(first, task="chest", run_id=run1, settings=reg_settings)
    second = make_bundle(work / "second", onnx=b"second-model", auc_abnormal=0.99)
    with start_run(reg_settings, "chest", "second", {"task": "chest"}) as run:
        run2 = run.run_id
        run.log_artifact(second, artifact_path="bundle")
        v2 = register_bundle(second, task="chest", run_id=run2, settings=reg_settings)
    return {"v1": v1, "v2": v2, "run1": run1, "run2": run2, "first": first, "second": second}


def test_configure_creates_embedded_store(reg_settings: Settings) -> None:
    uri = configure_mlflow(reg_settings)
    assert uri == reg_settings.tracking_uri and uri.startswith("sqlite:///")
    assert (reg_settings.data_dir / "mlflow").is_dir()
    import mlflow

    assert mlflow.get_tracking_uri() == uri


def test_experiment_artifacts_live_under_artifact_root(reg_settings: Settings, registered: dict[str, Any]) -> None:
    experiment_id = get_or_create_experiment("chest", reg_settings)
    assert get_or_create_experiment("chest", reg_settings) == experiment_id
    client = tracking_client(reg_settings)
    location = client.get_experiment(experiment_id).artifact_location
    assert location == (reg_settings.artifact_root / "chest").as_uri()
    run = client.get_run(registered["run1"])
    assert run.info.artifact_uri.startswith(location)
    assert (reg_settings.artifact_root / "chest" / registered["run1"] / "artifacts" / "bundle" / ONNX_FILE).is_file()


def test_run_logger_and_git_tag(reg_settings: Settings, tmp_path: Path) -> None:
    artifact = tmp_path / "note.txt"
    artifact.write_text("hello")
    with start_run(reg_settings, "scratch", "logger", {"purpose": "test"}) as run:
        run.log_params({"lr": 0.001, "layers": [1, 2], "opts": {"a": 1}, "none": None})
        run.log_metrics({"loss": 0.5, "skipped": None}, step=1)
        run.log_metrics({"loss": 0.25}, step=2)
        run.set_tags({"gate": "passed"})
        run.log_artifact(artifact, artifact_path="notes")
        run.log_artifact(tmp_path)  # a directory: its files go to the artifact root
        with pytest.raises(FileNotFoundError):
            run.log_artifact(tmp_path / "missing")
    client = tracking_client(reg_settings)
    data = client.get_run(run.run_id).data
    assert data.params == {"lr": "0.001", "layers": "[1, 2]", "opts": '{"a": 1}', "none": "None"}
    assert data.metrics == {"loss": 0.25}
    assert [m.step for m in client.get_metric_history(run.run_id, "loss")] == [1, 2]
    assert data.tags["purpose"] == "test" and data.tags["gate"] == "passed"
    assert data.tags.get(GIT_COMMIT_TAG) == git_commit()
    assert client.get_run(run.run_id).info.status == "FINISHED"
    assert {f.path for f in client.list_artifacts(run.run_id)} == {"notes", "note.txt"}


def test_failed_block_marks_run_failed(reg_settings: Settings) -> None:
    with pytest.raises(RuntimeError), start_run(reg_settings, "scratch", "boom", {}) as run:
        raise RuntimeError("boom")
    assert tracking_client(reg_settings).get_run(run.run_id).info.status == "FAILED"


def test_git_commit_outside_a_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert git_commit() is None


def test_register_returns_versions_with_staging(reg_settings: Settings, registered: dict[str, Any]) -> None:
    assert (registered["v1"], registered["v2"]) == (1, 2)
    versions = list_versions("chest", reg_settings)
    assert [v.version for v in versions] == [1, 2]
    v1, v2 = versions
    assert "staging" in v2.aliases
    assert "staging" not in v1.aliases
    assert (v1.run_id, v2.run_id) == (registered["run1"], registered["run2"])
    assert v1.status == "READY"
    assert v1.metrics["auc_abnormal"] == 0.97 and v2.metrics["auc_abnormal"] == 0.99
    assert v1.metrics["pneumonia_sensitivity"] == 0.955
    assert {"sensitivity_abnormal", "specificity_abnormal", "tuberculosis_sensitivity"} <= set(v1.metrics)
    assert "dataset_version" not in v1.metrics and v1.tags["dataset_version"] == "ds-1"
    assert v1.source.endswith("/bundle")


def test_already_logged_bundle_is_not_logged_twice(reg_settings: Settings, registered: dict[str, Any]) -> None:
    client = tracking_client(reg_settings)
    paths = sorted(f.path for f in client.list_artifacts(registered["run2"], "bundle"))
    assert paths == ["bundle/bundle.json", "bundle/model.onnx"]


def test_promotion_through_aliases(reg_settings: Settings, registered: dict[str, Any]) -> None:
    set_alias("chest", 1, "canary", reg_settings)
    set_alias("chest", 1, "production", reg_settings)
    by_version = {v.version: v.aliases for v in list_versions("chest", reg_settings)}
    assert by_version[1] == ["canary", "production"]
    set_alias("chest", 2, "canary", reg_settings)
    by_version = {v.version: v.aliases for v in list_versions("chest", reg_settings)}
    assert by_version == {1: ["production"], 2: ["staging", "canary"]}


def test_alias_errors(reg_settings: Settings, registered: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="invalid alias"):
        set_alias("chest", 1, "prod", reg_settings)
    with pytest.raises(ModelError, match="no version 99"):
        set_alias("chest", 99, "canary", reg_settings)
    with pytest.raises(ModelError, match="no registered model 'wrist'"):
        set_alias("wrist", 1, "canary", reg_settings)
    with pytest.raises(ModelError, match="no registered model 'wrist'"):
        list_versions("wrist", reg_settings)


def test_resolve_by_alias_version_and_run(reg_settings: Settings, registered: dict[str, Any]) -> None:
    set_alias("chest", 1, "production", reg_settings)
    cache = reg_settings.data_dir / "cache" / "bundles"
    prod = resolve_bundle("models:/chest@production", reg_settings)
    assert prod.parent == cache.resolve()
    assert (prod / ONNX_FILE).read_bytes() == b"first-model"
    assert load_meta(prod).metrics["auc_abnormal"] == 0.97
    assert resolve_bundle("models:/chest/1", reg_settings) == prod  # same name+version, same cache entry
    v2 = resolve_bundle("models:/chest/2", reg_settings)
    assert (v2 / ONNX_FILE).read_bytes() == b"second-model"
    staging = resolve_bundle("models:/chest@staging", reg_settings)
    assert staging == v2
    by_run = resolve_bundle(f"runs:/{registered['run1']}/bundle", reg_settings)
    assert by_run != prod and (by_run / ONNX_FILE).read_bytes() == b"first-model"
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no leftover staging folders


def test_resolve_reuses_complete_cache_and_repairs_incomplete(
    reg_settings: Settings, registered: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = resolve_bundle("models:/chest/1", reg_settings)
    import mlflow.artifacts

    def refuse(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("the cached bundle should have been reused")

    with monkeypatch.context() as mp:
        mp.setattr(mlflow.artifacts, "download_artifacts", refuse)
        assert resolve_bundle("models:/chest/1", reg_settings) == path
    (path / ONNX_FILE).unlink()  # an incomplete cache entry is downloaded again
    assert (resolve_bundle("models:/chest/1", reg_settings) / ONNX_FILE).read_bytes() == b"first-model"


def test_resolve_local_directories(reg_settings: Settings, registered: dict[str, Any], tmp_path: Path) -> None:
    first = registered["first"]
    assert resolve_bundle(str(first), reg_settings) == first.resolve()
    assert resolve_bundle(first.as_uri(), reg_settings) == first.resolve()
    with pytest.raises(ModelError, match="no such bundle folder"):
        resolve_bundle(str(tmp_path / "nowhere"), reg_settings)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=BUNDLE_FILE):
        resolve_bundle(str(tmp_path / "empty"), reg_settings)
    no_onnx = make_bundle(tmp_path / "no-onnx")
    (no_onnx / ONNX_FILE).unlink()
    with pytest.raises(ModelError, match=ONNX_FILE):
        resolve_bundle(str(no_onnx), reg_settings)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("models:/chest@nope", "no alias 'nope'"),
        ("models:/wrist@production", "no registered model 'wrist'"),
        ("models:/chest/99", "no version 99"),
        ("models:/chest/Production", "expected models:/NAME@ALIAS"),
        ("models:/chest", "expected models:/NAME@ALIAS"),
        ("runs:/0123456789abcdef0123456789abcdef/bundle", "unknown MLflow run"),
        ("runs:/onlyid", "expected runs:/RUN_ID/bundle"),
        ("gs://bucket/bundle", "unsupported model reference"),
    ],
)
def test_resolve_errors(reg_settings: Settings, registered: dict[str, Any], uri: str, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        resolve_bundle(uri, reg_settings)


def test_resolve_run_without_bundle(reg_settings: Settings) -> None:
    with start_run(reg_settings, "scratch", "no-bundle", {}) as run:
        pass
    with pytest.raises(ModelError, match="no artifacts under 'bundle'"):
        resolve_bundle(f"runs:/{run.run_id}/bundle", reg_settings)


def test_register_errors(reg_settings: Settings, registered: dict[str, Any], tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    with pytest.raises(ModelError, match="not 'wrist'"):
        register_bundle(bundle, task="wrist", run_id=registered["run1"], settings=reg_settings)
    with pytest.raises(ModelError, match="unknown MLflow run"):
        register_bundle(bundle, task="chest", run_id="0123456789abcdef0123456789abcdef", settings=reg_settings)
    with pytest.raises(ModelError):
        register_bundle(tmp_path / "missing", task="chest", run_id=registered["run1"], settings=reg_settings)


def test_flatten_metrics_handles_nested_per_class() -> None:
    flat = registry.flatten_metrics({"auc_abnormal": 0.9, "per_class": {"pneumonia": {"sensitivity": 0.8}}, "x": "s"})
    assert flat == {"auc_abnormal": 0.9, "pneumonia_sensitivity": 0.8}


def test_configuring_mlflow_leaves_the_environment_alone(tmp_path, monkeypatch):
    import os

    from care_companion.config import Settings
    from care_companion.registry.tracking import configure_mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    configure_mlflow(Settings(data_dir=tmp_path / "a"))
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert Settings(data_dir=tmp_path / "b").tracking_uri.endswith(f"{tmp_path}/b/mlflow/mlflow.db")
