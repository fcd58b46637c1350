"""The model registry over MLflow's: one registered model per task, bundles as versions, and aliases.

A version's source is the ``bundle`` artifact folder of the training run (``model.onnx`` + ``bundle.json``);
no MLflow model flavour is involved. Aliases move versions through staging → canary → production.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from care_companion.errors import ConfigError, ModelError
from care_companion.models.bundle import BUNDLE_FILE, ONNX_FILE, BundleMeta, load_meta
from care_companion.registry.refs import ALIASES as ALIASES  # defined with the parser; imported from here too
from care_companion.registry.refs import BUNDLE_ARTIFACT_PATH as BUNDLE_ARTIFACT_PATH
from care_companion.registry.refs import ModelRef, RefKind
from care_companion.registry.tracking import tracking_client

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from care_companion.config import Settings

INFO_TAGS = ("task", "dataset_version", "backbone", "demo", "bundle_created_at", "git_commit")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CACHE_MARKER = ".source.json"


class VersionInfo(BaseModel):
    """One registered model version with its aliases and the test metrics copied into its tags."""

    name: str
    version: int
    aliases: list[str] = Field(default_factory=list)
    run_id: str | None = None
    created: datetime
    metrics: dict[str, float] = Field(default_factory=dict)
    status: str = ""
    source: str = ""
    tags: dict[str, str] = Field(default_factory=dict)


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ModelError(f"invalid registered model name {name!r}")
    return name


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "error_code", ""))


def _not_found(exc: Exception) -> bool:
    return _error_code(exc) == "RESOURCE_DOES_NOT_EXIST"


def flatten_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Numeric entries of bundle metrics as flat names (``per_class[cls][m]`` becomes ``cls_m``)."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if key == "per_class" and isinstance(value, dict):
            for cls, values in value.items():
                if isinstance(values, dict):
                    for name, number in values.items():
                        if isinstance(number, int | float) and not isinstance(number, bool):
                            flat.setdefault(f"{cls}_{name}", float(number))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[str(key)] = float(value)
    return flat


def _metrics_from_tags(tags: dict[str, str]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for key, value in tags.items():
        if key in INFO_TAGS or key.startswith("mlflow."):
            continue
        try:
            metrics[key] = float(value)
        except (TypeError, ValueError):
            continue
    return metrics


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return
    except MlflowException as exc:
        if not _not_found(exc):
            raise
    try:
        client.create_registered_model(name, description=f"Model bundles of the {name!r} task (ONNX + bundle.json).")
    except MlflowException as exc:
        if _error_code(exc) != "RESOURCE_ALREADY_EXISTS":  # created concurrently
            raise


def _bundle_logged(client: MlflowClient, run_id: str) -> bool:
    names = {Path(f.path).name for f in client.list_artifacts(run_id, BUNDLE_ARTIFACT_PATH)}
    return {BUNDLE_FILE, ONNX_FILE} <= names


def _validate_bundle_dir(directory: Path) -> BundleMeta:
    meta = load_meta(directory)
    if not (Path(directory) / ONNX_FILE).is_file():
        raise ModelError(f"{directory}: model bundle has no {ONNX_FILE}")
    return meta


# Model-version tags: the registry gate on the bundle's canary-split evaluation (passed, refused, absent) and why.
CANARY_SPLIT_TAG = "care.canary_split"
CANARY_SPLIT_DETAIL_TAG = "care.canary_split_detail"


def register_bundle(
    bundle_dir: Path, *, task: str, run_id: str, settings: Settings, tags: dict[str, str] | None = None
) -> int:
    """Register a bundle as a new version of model ``task`` from run ``run_id``, alias it ``staging``.

    The bundle folder is logged as the run's ``bundle`` artifacts unless already there; its test metrics
    (and ``tags``) become model-version tags. Returns the new version number.
    """
    from mlflow.exceptions import MlflowException

    _check_name(task)
    bundle_dir = Path(bundle_dir)
    meta = _validate_bundle_dir(bundle_dir)
    if meta.task != task:
        raise ModelError(f"{bundle_dir}: bundle is for task {meta.task!r}, not {task!r}")
    client = tracking_client(settings)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise ModelError(f"unknown MLflow run {run_id!r}: {exc.message}") from exc
    if not _bundle_logged(client, run_id):
        client.log_artifacts(run_id, str(bundle_dir), BUNDLE_ARTIFACT_PATH)
    source = f"{run.info.artifact_uri.rstrip('/')}/{BUNDLE_ARTIFACT_PATH}"

    extra = dict(tags or {})
    tags = {key: repr(value) for key, value in flatten_metrics(meta.metrics).items()}
    info = {
        "task": meta.task,
        "dataset_version": meta.dataset_version,
        "backbone": meta.backbone,
        "demo": str(meta.demo).lower(),
        "bundle_created_at": meta.created_at,
        "git_commit": meta.git_commit or "",
    }
    tags.update({key: value for key, value in info.items() if value})
    tags.update(extra)
    _ensure_registered_model(client, task)
    description = f"{meta.backbone} on data set {meta.dataset_version or '?'}" + (" (demo)" if meta.demo else "")
    version = client.create_model_version(task, source, run_id, tags=tags, description=description)
    client.set_registered_model_alias(task, "staging", str(version.version))
    return int(version.version)


def _registered_model(client: MlflowClient, name: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(_check_name(name))
    except MlflowException as exc:
        if not _not_found(exc):
            raise
    known = sorted(m.name for m in client.search_registered_models())
    listed = ", ".join(known) if known else "none yet; train and register a model first"
    raise ModelError(f"no registered model {name!r} in {client.tracking_uri} (registered: {listed})")


def _version_numbers(client: MlflowClient, name: str) -> list[int]:
    versions: list[int] = []
    token = None
    while True:
        page = client.search_model_versions(f"name='{name}'", page_token=token)
        versions.extend(int(v.version) for v in page)
        token = page.token
        if not token:
            return sorted(versions)


def _get_version(client: MlflowClient, name: str, version: int | str) -> ModelVersion:
    from mlflow.exceptions import MlflowException

    _registered_model(client, name)
    try:
        number = int(version)
    except (TypeError, ValueError):
        raise ModelError(f"invalid version {version!r} of model {name!r}: versions are integers") from None
    try:
        return client.get_model_version(name, str(number))
    except MlflowException as exc:
        if not _not_found(exc):
            raise
    known = ", ".join(map(str, _version_numbers(client, name))) or "none"
    raise ModelError(f"model {name!r} has no version {number} (versions: {known})")


def _get_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion:
    from mlflow.exceptions import MlflowException

    model = _registered_model(client, name)
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if not _not_found(exc) and _error_code(exc) != "INVALID_PARAMETER_VALUE":
            raise
    known = ", ".join(f"{a} -> {v}" for a, v in sorted(model.aliases.items())) or "none"
    raise ModelError(f"model {name!r} has no alias {alias!r} (aliases: {known})")


def set_alias(task: str, version: int, alias: str, settings: Settings) -> None:
    """Point ``alias`` (staging, canary or production) of model ``task`` at ``version``."""
    if alias not in ALIASES:
        raise ConfigError(f"invalid alias {alias!r}; use one of: {', '.join(ALIASES)}")
    client = tracking_client(settings)
    found = _get_version(client, task, version)
    client.set_registered_model_alias(task, alias, str(found.version))


def version_tags(task: str, version: int, settings: Settings) -> dict[str, str]:
    """The tags of version ``version`` of model ``task``.

    Raises:
        ModelError: no such version.
    """
    return dict(_get_version(tracking_client(settings), task, version).tags or {})


def delete_alias(task: str, alias: str, settings: Settings) -> None:
    """Remove ``alias`` of model ``task`` (nothing happens when it is not set)."""
    client = tracking_client(settings)
    if (_registered_model(client, task).aliases or {}).get(alias) is not None:
        client.delete_registered_model_alias(task, alias)


def list_versions(task: str, settings: Settings) -> list[VersionInfo]:
    """Every version of model ``task``, oldest first, with aliases and metrics."""
    client = tracking_client(settings)
    model = _registered_model(client, task)
    aliases: dict[int, list[str]] = {}
    for alias, number in model.aliases.items():
        aliases.setdefault(int(number), []).append(alias)
    out: list[VersionInfo] = []
    token = None
    while True:
        page = client.search_model_versions(f"name='{task}'", page_token=token)
        for v in page:
            tags = dict(v.tags or {})
            out.append(
                VersionInfo(
                    name=task,
                    version=int(v.version),
                    aliases=sorted(aliases.get(int(v.version), []), key=_alias_order),
                    run_id=v.run_id or None,
                    created=datetime.fromtimestamp((v.creation_timestamp or 0) / 1000, UTC),
                    metrics=_metrics_from_tags(tags),
                    status=str(v.status or ""),
                    source=v.source or "",
                    tags=tags,
                )
            )
        token = page.token
        if not token:
            return sorted(out, key=lambda info: info.version)


def _alias_order(alias: str) -> tuple[int, str]:
    return (ALIASES.index(alias) if alias in ALIASES else len(ALIASES), alias)


def _cache_root(settings: Settings) -> Path:
    return (settings.data_dir / "cache" / "bundles").resolve()


def _cached(directory: Path, source: str) -> bool:
    marker = directory / _CACHE_MARKER
    try:
        recorded = json.loads(marker.read_text()).get("source")
    except (OSError, ValueError, AttributeError):
        return False
    if recorded != source:
        return False
    try:
        _validate_bundle_dir(directory)
    except ModelError:
        return False
    return True


def _download(source: str, key: str, settings: Settings, tracking_uri: str) -> Path:
    """Download the bundle at ``source`` into the cache folder ``key`` (reused when present and complete)."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    root = _cache_root(settings)
    final = root / key
    if _cached(final, source):
        return final
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    try:
        try:
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=source, dst_path=str(staging), tracking_uri=tracking_uri
                )
            )
        except (MlflowException, OSError) as exc:
            raise ModelError(f"could not download the model bundle from {source}: {exc}") from exc
        if not local.is_dir():
            raise ModelError(f"{source}: is a file, not a model bundle folder")
        try:
            _validate_bundle_dir(local)
        except ModelError as exc:
            raise ModelError(f"{source}: artifacts are not a complete model bundle ({exc.detail})") from exc
        (local / _CACHE_MARKER).write_text(json.dumps({"source": source}))
        if final.exists():
            shutil.rmtree(final, ignore_errors=True)  # stale or incomplete
        try:
            os.replace(local, final)
        except OSError:
            if not _cached(final, source):  # not a concurrent download of the same bundle
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _cache_key(*parts: str) -> str:
    return "-".join(re.sub(r"[^A-Za-z0-9_.]+", "_", part).strip("_") or "_" for part in parts)


def resolve_bundle(model: str | ModelRef, settings: Settings) -> Path:
    """A local bundle folder for ``model``, downloading registry or run artifacts into the cache if needed.

    ``model`` is a bundle directory (or ``file://`` URI), ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``
    or ``runs:/RUN_ID/bundle`` (see :class:`~care_companion.registry.refs.ModelRef`).

    Raises:
        ModelError: an invalid reference (:class:`~care_companion.registry.refs.InvalidModelRef`), or a model,
            version, alias, run or folder that is not there.
    """
    ref = model if isinstance(model, ModelRef) else ModelRef.parse(model)
    if ref.in_registry:
        return _resolve_registered(ref, settings)
    if ref.kind is RefKind.RUN:
        return _resolve_run(ref, settings)
    directory = ref.directory
    if not directory.is_dir():
        raise ModelError(
            f"{ref}: no such bundle folder (expected a folder with {BUNDLE_FILE} and {ONNX_FILE}, "
            f"or a registry URI like models:/chest@production)"
        )
    _validate_bundle_dir(directory)
    return directory.resolve()


def _resolve_registered(ref: ModelRef, settings: Settings) -> Path:
    """The cached bundle of a registry alias or version, downloaded when missing."""
    client = tracking_client(settings)
    if ref.kind is RefKind.ALIAS:
        version = _get_alias(client, ref.name, ref.alias)
    else:
        assert ref.version is not None
        version = _get_version(client, ref.name, ref.version)
    if not version.source:
        raise ModelError(f"version {version.version} of model {ref.name!r} has no source location")
    key = _cache_key(ref.name, f"v{version.version}")
    return _download(version.source, key, settings, client.tracking_uri)


def _resolve_run(ref: ModelRef, settings: Settings) -> Path:
    """The cached artifacts of a run reference, downloaded when missing."""
    from mlflow.exceptions import MlflowException

    client = tracking_client(settings)
    try:
        client.get_run(ref.run_id)
    except MlflowException as exc:
        raise ModelError(f"unknown MLflow run {ref.run_id!r} in {client.tracking_uri}") from exc
    if not client.list_artifacts(ref.run_id, ref.path):
        raise ModelError(f"run {ref.run_id} has no artifacts under {ref.path!r}")
    return _download(ref.uri, _cache_key("run", ref.run_id, ref.path), settings, client.tracking_uri)


PREVIOUS_PRODUCTION_TAG = "care.previous_production"


def previous_production(task: str, settings: Settings) -> int | None:
    """The version production pointed at before its last move (kept as a tag of the registered model)."""
    client = tracking_client(settings)
    value = (_registered_model(client, task).tags or {}).get(PREVIOUS_PRODUCTION_TAG)
    return int(value) if value else None


def note_previous_production(task: str, version: int, settings: Settings) -> None:
    """Remember ``version`` as the one production pointed at before its move (for a one-step rollback)."""
    tracking_client(settings).set_registered_model_tag(task, PREVIOUS_PRODUCTION_TAG, str(version))


def alias_version(task: str, alias: str, settings: Settings) -> int | None:
    """The version ``alias`` of model ``task`` points at, or ``None`` when the model or alias does not exist.

    Cheap enough to poll: one registry call, nothing downloaded.
    """
    client = tracking_client(settings)
    try:
        model = _registered_model(client, task)
    except ModelError:
        return None
    number = (model.aliases or {}).get(alias)
    return int(number) if number is not None else None
