"""Train → calibrate → choose the operating point → export → evaluate on test → gate → register.

This is what ``care-companion train`` runs; tests and later pipelines (retraining) call it directly.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from care_companion.config import Settings
from care_companion.data.cache import build_cache
from care_companion.data.datasets import ArrayData
from care_companion.data.manifest import Manifest, load_manifest, study_kinds, study_table, view_column
from care_companion.errors import DataError
from care_companion.evaluation.metrics import EvaluationReport, evaluate_predictions
from care_companion.evaluation.plots import write_plots
from care_companion.models.base import BackboneClassifier
from care_companion.models.bundle import CHECKPOINT_FILE, ONNX_FILE, BundleMeta, Int8Report, Normalisation, save_meta
from care_companion.models.export import export_onnx
from care_companion.models.predictor import BundlePredictor, softmax
from care_companion.registry.gate import GateResult, check_gate
from care_companion.registry.models import CANARY_SPLIT_DETAIL_TAG, CANARY_SPLIT_TAG, register_bundle
from care_companion.registry.tracking import git_commit, start_run
from care_companion.storage import ObjectStore, store_from_settings
from care_companion.tasks import TaskSpec
from care_companion.training.calibration import fit_temperature
from care_companion.training.distributed import train_on_ray
from care_companion.training.operating_point import choose_operating_point
from care_companion.training.threads import training_threads
from care_companion.training.trainer import TrainConfig, TrainResult, predict_logits, train_classifier
from care_companion.training.world import LocalWorld
from care_companion.workflows.ood_gate import build_ood_gate
from care_companion.workflows.profiling import build_profile
from care_companion.workflows.quantization import add_int8
from care_companion.workflows.scoring import item_probabilities

log = logging.getLogger(__name__)

EVALUATION_FILE = "evaluation.json"
CANARY_EVALUATION_FILE = "evaluation_canary.json"  # the same bundle on the data set's 1% canary split


class TrainOutcome(BaseModel):
    """The result of one training run, registered or refused."""

    task: str
    bundle_dir: Path
    run_id: str
    dataset_version: str
    registered_version: int | None
    gate: GateResult
    metrics: dict[str, Any]
    train_seconds: float
    images_per_second: float
    int8: Int8Report | None = None


def resolve_init_weights(value: str, settings: Settings) -> Path:
    """A checkpoint path from a file path, a bundle directory or a registry URI (``models:/chest@production``)."""
    from care_companion.registry.models import resolve_bundle

    path = Path(value)
    if path.is_file():
        return path
    return resolve_bundle(value, settings) / CHECKPOINT_FILE


def split_arrays(manifest: Manifest, images: np.ndarray, task: TaskSpec) -> dict[str, ArrayData]:
    """Cached images and labels of every split, with source and origin for per-source breakdowns.

    Multi-view tasks get one item per study (its views index the shared image cache) and a ``views`` group
    (``pa+lateral``, ``pa``, ``lateral``) so results are also broken down by the views a study had.
    """
    if not task.multiview:
        frame = manifest.frame
        labels = np.array([task.index(c) for c in frame["label"]], dtype=np.int64)
        out = {}
        for name in frame["split"].unique():
            idx = np.flatnonzero((frame["split"] == name).to_numpy())
            groups = {col: frame[col].to_numpy()[idx].astype(str) for col in ("source", "origin")}
            out[str(name)] = ArrayData(images=images[idx], labels=labels[idx], groups=groups)
        return out
    table = study_table(manifest.frame, task.views)
    labels = np.array([task.index(c) for c in table["label"]], dtype=np.int64)
    views = table[[view_column(v) for v in task.views]].to_numpy(np.int64)
    kinds = study_kinds(table, task.views).to_numpy().astype(str)
    out = {}
    for name in table["split"].unique():
        idx = np.flatnonzero((table["split"] == name).to_numpy())
        groups = {col: table[col].to_numpy()[idx].astype(str) for col in ("source", "origin")} | {"views": kinds[idx]}
        out[str(name)] = ArrayData(
            images=images, labels=labels[idx], groups=groups, views=views[idx], view_names=tuple(task.views)
        )
    return out


def cap_per_class(data: ArrayData, cap: int | None, seed: int) -> ArrayData:
    """At most ``cap`` random items per class (all when ``cap`` is None)."""
    if cap is None:
        return data
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(data.labels == c))[:cap] for c in np.unique(data.labels)]
    return data.subset(np.sort(np.concatenate(keep)))


def summary_metrics(report: EvaluationReport, task: TaskSpec) -> dict[str, float]:
    """Flat test metrics for MLflow, model-version tags and ``bundle.json``."""
    data = report.model_dump(mode="json")
    flat: dict[str, float] = {}
    for key in ("auc_abnormal", "sensitivity_abnormal", "specificity_abnormal", "ece"):
        if data.get(key) is not None:
            flat[key] = float(data[key])
    for cls, values in data["per_class"].items():
        for name in ("sensitivity", "specificity", "auc"):
            if values.get(name) is not None:
                flat[f"{cls}_{name}"] = float(values[name])
    for key in ("reject_recall", "reject_rate_xray"):
        if data.get(key) is not None:
            flat[key] = float(data[key])
    return flat


@dataclass
class _Splits:
    """The data a run trains, calibrates and is tested on."""

    manifest: Manifest
    train: ArrayData
    val: ArrayData
    test: ArrayData
    sizes: dict[str, int]
    canary: ArrayData | None = None  # the 1% split kept for the release's offline check (staging -> canary)


@dataclass
class _Scored:
    """An exported, calibrated bundle scored on the test split."""

    meta: BundleMeta
    report: EvaluationReport
    metrics: dict[str, float]
    plots: dict[str, Path]
    temperature: float
    thresholds: dict[str, float]
    warnings: list[str]
    canary_report: EvaluationReport | None = None  # the same bundle on the canary split


def train_task(
    task: TaskSpec,
    config: TrainConfig,
    *,
    settings: Settings,
    dataset_version: str | None = None,
    register: bool = True,
    demo: bool = False,
    int8: bool = True,
    workers: int = 0,
    ray_address: str | None = None,
    resume: str | None = None,
) -> TrainOutcome:
    """Run the whole training pipeline for ``task`` and leave a model bundle behind, registered or not.

    The stages: load the splits, fit, calibrate and export, score the bundle on test, add its INT8 model,
    out-of-distribution gate and drift profile, gate and register.

    Args:
        task: the clinical task.
        config: training recipe and options.
        settings: data dir, object store, MLflow and gate settings.
        dataset_version: a data-set version to train on (default: the latest import).
        register: register the bundle when it passes the gate.
        demo: mark the bundle as a demo model (synthetic data, not for clinical use).
        int8: also make a statically quantised INT8 model (calibrated on validation) and compare it.
        workers: 0 trains in this process; N trains data-parallel on N Ray Train workers (a local Ray instance,
            or the cluster at ``ray_address`` / ``RAY_ADDRESS``).
        ray_address: a Ray cluster to train on.
        resume: the name of an interrupted training run to continue from its last checkpoint (printed, and
            tagged ``checkpoint_name`` in MLflow, when a run starts).
    """
    torch.set_num_threads(training_threads(settings.num_threads))
    store = store_from_settings(settings)
    data = load_splits(task, config, settings, dataset_version, store=store)
    version = data.manifest.version
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = resume or f"{task.name}-{stamp}"
    tags = {"task": task.name, "dataset_version": version, "demo": str(demo).lower(), "checkpoint_name": name}
    checkpoints = settings.data_dir.resolve() / "checkpoints" / name
    with start_run(settings, experiment=task.name, run_name=f"{task.name}-{stamp}", tags=tags) as run:
        bundle_dir = settings.runs_dir / f"{task.name}-{stamp}-{run.run_id[:8]}"
        bundle_dir.mkdir(parents=True, exist_ok=True)
        params = config.model_dump(mode="json") | {
            "dataset_version": version,
            **{f"n_{split}": n for split, n in data.sizes.items()},
            "n_train_used": len(data.train),
            "workers": workers,
        }
        run.log_params(params)
        log.info("training run %s (continue it with --resume %s)", name, name)
        model, result = fit(
            task,
            config,
            data,
            run,
            checkpoints=checkpoints,
            workers=workers,
            address=ray_address,
            ray_storage=settings.ray_storage_uri,
        )
        torch.save(model.state_dict(), bundle_dir / CHECKPOINT_FILE)
        training = params | {"init": result.init, "best": result.best}
        scored = export_and_score(
            model, task, config, data, settings, bundle_dir, demo=demo, run_id=run.run_id, training=training
        )
        quantized = add_extras(bundle_dir, task, config, data, store, run, int8=int8)
        run.log_metrics(
            {f"test_{k}": v for k, v in scored.metrics.items()}
            | {
                "temperature": scored.temperature,
                "train_seconds": result.seconds,
                "images_per_second": result.images_per_second,
            }
            | {f"threshold_{k}": v for k, v in scored.thresholds.items()},
            step=len(result.history) + 1,
        )
        gate, registered = gate_and_register(bundle_dir, task, scored, settings, run, register=register)
    shutil.rmtree(checkpoints, ignore_errors=True)  # the run is complete: nothing left to resume
    return TrainOutcome(
        task=task.name,
        bundle_dir=bundle_dir,
        run_id=run.run_id,
        dataset_version=version,
        registered_version=registered,
        gate=gate,
        metrics=scored.metrics,
        train_seconds=result.seconds,
        images_per_second=result.images_per_second,
        int8=quantized,
    )


def load_splits(
    task: TaskSpec, config: TrainConfig, settings: Settings, dataset_version: str | None, *, store: ObjectStore
) -> _Splits:
    """Stage 1: the data set's cached images as train (capped per class), validation and test arrays.

    Raises:
        DataError: a split is missing.
    """
    manifest = load_manifest(store, task.name, dataset_version)
    images = build_cache(store, manifest, config.image_size, settings.cache_dir)
    splits = split_arrays(manifest, images, task)
    for needed in ("train", "val", "test"):
        if needed not in splits:
            raise DataError(f"data set {manifest.version} has no {needed} split; import more images")
    train = cap_per_class(splits["train"], config.max_train_per_class, config.seed)
    sizes = {split: len(part) for split, part in splits.items()}
    canary = splits.get("canary")
    return _Splits(
        manifest=manifest,
        train=train,
        val=splits["val"],
        test=splits["test"],
        sizes=sizes,
        canary=canary if canary is not None and len(canary) else None,
    )


def fit(
    task: TaskSpec,
    config: TrainConfig,
    data: _Splits,
    run: Any,
    *,
    checkpoints: Path,
    workers: int,
    address: str | None,
    ray_storage: str,
) -> tuple[BackboneClassifier, TrainResult]:
    """Stage 2: train in this process (checkpoints under ``checkpoints``) or on ``workers`` Ray Train workers
    (checkpoints in ``ray_storage``); every epoch's validation metrics go to the MLflow run."""

    def on_epoch(metrics: dict[str, Any]) -> None:
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and k != "step"}
        run.log_metrics(numeric, step=int(metrics["step"]))

    if workers:
        return train_on_ray(
            data.train,
            data.val,
            task,
            config,
            workers=workers,
            storage=ray_storage,
            name=checkpoints.name,
            on_epoch=on_epoch,
            address=address,
        )
    return train_classifier(data.train, data.val, task, config, on_epoch=on_epoch, world=LocalWorld(checkpoints))


def export_and_score(
    model: BackboneClassifier,
    task: TaskSpec,
    config: TrainConfig,
    data: _Splits,
    settings: Settings,
    bundle_dir: Path,
    *,
    demo: bool,
    run_id: str,
    training: dict[str, Any],
) -> _Scored:
    """Stage 3: fit the temperature and choose the operating point on validation, export the ONNX bundle, and
    score the exported bundle (the artifact that will be served) on the test split, with plots."""
    val_logits = predict_logits(model, data.val, batch_size=64, mean=config.mean, std=config.std)
    temperature = fit_temperature(val_logits, data.val.labels)
    operating = choose_operating_point(
        softmax(val_logits, temperature), data.val.labels, task, target_sensitivity=settings.target_sensitivity
    )
    onnx_diff = export_onnx(model, bundle_dir / ONNX_FILE, input_size=config.image_size)
    meta = BundleMeta.for_task(
        task,
        backbone=config.backbone,
        output_stride=config.output_stride,
        map_centres=model.map_centres(config.image_size),
        input_size=config.image_size,
        normalisation=Normalisation(mean=config.mean, std=config.std),
        temperature=temperature,
        thresholds=operating.thresholds,
        target_sensitivity=settings.target_sensitivity,
        dataset_version=data.manifest.version,
        demo=demo,
        git_commit=git_commit(),
        run_id=run_id,
        training=training | {"onnx_max_abs_diff": onnx_diff},
    )
    save_meta(bundle_dir, meta)
    test = data.test
    exported = BundlePredictor(bundle_dir)
    probs = item_probabilities(exported, test)
    report = evaluate_predictions(test.labels, probs, task, operating.thresholds, groups=test.groups, seed=config.seed)
    (bundle_dir / EVALUATION_FILE).write_text(report.model_dump_json(indent=2))
    plots = write_plots(test.labels, probs, task, report, bundle_dir / "plots")
    meta.metrics = summary_metrics(report, task)
    save_meta(bundle_dir, meta)
    canary_report = None
    if data.canary is not None:
        canary = data.canary
        canary_probs = item_probabilities(exported, canary)
        canary_report = evaluate_predictions(
            canary.labels, canary_probs, task, operating.thresholds, groups=canary.groups, seed=config.seed
        )
        (bundle_dir / CANARY_EVALUATION_FILE).write_text(canary_report.model_dump_json(indent=2))
    return _Scored(
        canary_report=canary_report,
        meta=meta,
        report=report,
        metrics=meta.metrics,
        plots=plots,
        temperature=temperature,
        thresholds=operating.thresholds,
        warnings=list(operating.warnings),
    )


def add_extras(
    bundle_dir: Path, task: TaskSpec, config: TrainConfig, data: _Splits, store: Any, run: Any, *, int8: bool
) -> Int8Report | None:
    """Stage 4: the bundle's INT8 model (when asked), out-of-distribution gate and drift reference profile.

    Each is optional for serving: a failure is logged and the trained model is kept (without INT8 the service
    runs float32; without the gate the reject class still refuses; without a profile drift monitoring is off).
    """
    quantized = None
    if int8:
        try:
            quantized = add_int8(bundle_dir, data.val, data.test, task, seed=config.seed)
            run.log_metrics({f"int8_test_{k}": v for k, v in quantized.test["int8"].items()})
            run.set_tags({"int8_preferred": str(quantized.preferred).lower()})
        except Exception as exc:
            log.warning("INT8 quantisation failed, the bundle keeps only float32: %s", exc)
    try:
        build_ood_gate(bundle_dir, task, train=data.train, val=data.val, seed=config.seed)
    except Exception as exc:
        log.warning("no out-of-distribution gate: %s", exc)
    try:
        build_profile(
            bundle_dir, task, store=store, manifest=data.manifest, train=data.train, val=data.val, seed=config.seed
        )
    except Exception as exc:
        log.warning("no reference profile for drift monitoring: %s", exc)
    return quantized


def canary_split_tags(report: EvaluationReport | None, task: TaskSpec, settings: Settings) -> dict[str, str]:
    """The registry gate applied to the bundle's canary-split evaluation, as model-version tags that
    ``release promote --to canary`` requires (``absent``: the data set had no canary split)."""
    if report is None:
        return {CANARY_SPLIT_TAG: "absent", CANARY_SPLIT_DETAIL_TAG: "the data set has no canary split"}
    gate = check_gate(
        report.model_dump(mode="json"),
        positives=task.positives,
        min_sensitivity=settings.gate_min_sensitivity,
        min_auc=settings.gate_min_auc,
    )
    values = ", ".join(f"{name} {check['value']}" for name, check in gate.checks.items())
    detail = "; ".join(gate.shortfalls) if gate.shortfalls else values
    return {CANARY_SPLIT_TAG: "passed" if gate.passed else "refused", CANARY_SPLIT_DETAIL_TAG: detail[:5000]}


def gate_and_register(
    bundle_dir: Path, task: TaskSpec, scored: _Scored, settings: Settings, run: Any, *, register: bool
) -> tuple[GateResult, int | None]:
    """Stage 5: the registry gate on the test report; a passing bundle is registered (alias staging), a refused
    one is kept as a run artifact and the run tagged for retraining."""
    gate = check_gate(
        scored.report.model_dump(mode="json"),
        positives=task.positives,
        min_sensitivity=settings.gate_min_sensitivity,
        min_auc=settings.gate_min_auc,
    )
    run.set_tags({"gate": "passed" if gate.passed else "refused"})
    canary = canary_split_tags(scored.canary_report, task, settings)
    run.set_tags(canary)
    registered = None
    if gate.passed and register:
        registered = register_bundle(bundle_dir, task=task.name, run_id=run.run_id, settings=settings, tags=canary)
    else:
        run.set_tags({"needs_retraining": str(not gate.passed).lower(), "gate_shortfalls": "; ".join(gate.shortfalls)})
        run.log_artifact(bundle_dir, artifact_path="bundle")
    for path in scored.plots.values():
        run.log_artifact(path, artifact_path="plots")
    for warning in scored.warnings:
        log.warning("operating point: %s", warning)
    return gate, registered
