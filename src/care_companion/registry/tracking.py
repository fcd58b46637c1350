"""MLflow experiment tracking: where runs go, and a small logger around one active run.

Nothing here touches MLflow at import time; :func:`configure_mlflow` points it at the settings' store.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from care_companion.config import Settings

GIT_COMMIT_TAG = "git_commit"
MAX_PARAM_LENGTH = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_TAG_LENGTH = 8000  # mlflow.utils.validation.MAX_TAG_VAL_LENGTH
_REMOTE_SCHEMES = {"http", "https", "databricks", "databricks-uc", "uc"}


def configure_mlflow(settings: Settings) -> str:
    """Point MLflow at the settings' tracking store (creating the folder of a SQLite store) and return its URI."""
    import mlflow

    uri = settings.tracking_uri
    if uri.startswith("sqlite:///") and ":memory:" not in uri:
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    # MLflow also writes the URI into os.environ["MLFLOW_TRACKING_URI"]; put the user's value back so the
    # environment keeps meaning what the user set (Settings reads it) rather than the last store used
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
    return uri


def _uses_local_artifacts(uri: str) -> bool:
    """True where no tracking server chooses artifact locations (SQLite, other databases, file stores)."""
    return urlparse(uri).scheme.split("+")[0].lower() not in _REMOTE_SCHEMES


def tracking_client(settings: Settings) -> MlflowClient:
    """An MLflow client on the settings' tracking (and, by default, registry) store."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=configure_mlflow(settings))


def get_or_create_experiment(name: str, settings: Settings) -> str:
    """ID of the experiment ``name``, created (or restored) if needed.

    Without a tracking server, artifacts go to ``settings.artifact_root / name``; with one, the server decides.
    """
    from mlflow.exceptions import MlflowException

    client = tracking_client(settings)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    location = None
    if _uses_local_artifacts(client.tracking_uri):
        root = settings.artifact_root / name
        root.mkdir(parents=True, exist_ok=True)
        location = root.as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        experiment = client.get_experiment_by_name(name)  # created concurrently by another process
        if experiment is None:
            raise
        return experiment.experiment_id


def git_commit() -> str | None:
    """The HEAD commit of the git repository containing the working directory, or None."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", "HEAD"],
            cwd=os.getcwd(),
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None


def _param_value(value: Any) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, Mapping | list | tuple):
        text = json.dumps(value, sort_keys=True, default=str)
    else:
        text = str(value)
    return text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class RunLogger:
    """Logs parameters, metrics, tags and artifacts to one MLflow run.

    It pickles as (run id, tracking URI), so a training worker in another process (Ray) can log to the run.
    """

    def __init__(self, run_id: str, client: MlflowClient, tracking_uri: str | None = None) -> None:
        self.run_id = run_id
        self.client = client
        self.tracking_uri = tracking_uri

    def __reduce__(self) -> tuple[Any, tuple[str, str | None]]:
        if self.tracking_uri is None:
            raise TypeError("this RunLogger was made without its tracking URI and cannot be sent to a worker")
        return _remote_logger, (self.run_id, self.tracking_uri)

    @property
    def artifact_uri(self) -> str:
        """Root URI of the run's artifacts."""
        return self.client.get_run(self.run_id).info.artifact_uri

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log parameters; nested values are JSON-encoded, long values truncated to MLflow's limit."""
        from mlflow.entities import Param

        entries = [Param(str(key), _param_value(value)) for key, value in params.items()]
        for chunk in _chunks(entries, 100):
            self.client.log_batch(self.run_id, params=chunk)

    def log_metrics(self, metrics: Mapping[str, float | int | None], step: int = 0) -> None:
        """Log numeric metrics at ``step``; None values are skipped."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [
            Metric(str(key), float(value), now, int(step))
            for key, value in metrics.items()
            if value is not None and not isinstance(value, bool)
        ]
        for chunk in _chunks(entries, 1000):
            self.client.log_batch(self.run_id, metrics=chunk)

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        """Log a file, or every file of a directory (its contents go under ``artifact_path``)."""
        local = Path(path)
        if local.is_dir():
            self.client.log_artifacts(self.run_id, str(local), artifact_path)
        elif local.is_file():
            self.client.log_artifact(self.run_id, str(local), artifact_path)
        else:
            raise FileNotFoundError(f"{local}: no such file or directory to log as an artifact")

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (values converted to strings)."""
        from mlflow.entities import RunTag

        entries = [RunTag(str(key), str(value)[:MAX_TAG_LENGTH]) for key, value in tags.items()]
        for chunk in _chunks(entries, 100):
            self.client.log_batch(self.run_id, tags=chunk)


def _remote_logger(run_id: str, tracking_uri: str) -> RunLogger:
    from mlflow import MlflowClient

    return RunLogger(run_id, MlflowClient(tracking_uri=tracking_uri), tracking_uri)


@contextmanager
def start_run(
    settings: Settings, experiment: str, run_name: str, tags: Mapping[str, Any] | None = None
) -> Iterator[RunLogger]:
    """Start an MLflow run in ``experiment`` (nested under an active run, if any), tagged with the git commit.

    The run ends as FINISHED, or FAILED when the block raises.
    """
    import mlflow

    experiment_id = get_or_create_experiment(experiment, settings)
    all_tags = {str(key): str(value) for key, value in (tags or {}).items()}
    commit = git_commit()
    if commit:
        all_tags[GIT_COMMIT_TAG] = commit
        all_tags.setdefault("mlflow.source.git.commit", commit)
    client = tracking_client(settings)
    nested = mlflow.active_run() is not None
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=all_tags, nested=nested) as active:
        yield RunLogger(active.info.run_id, client, settings.tracking_uri)
