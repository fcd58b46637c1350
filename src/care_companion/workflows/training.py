"""Train → calibrate → choose the operating point → export → evaluate on test → gate → register.

This is what ``care-companion train`` runs; tests and later pipelines (retraining) call it directly.
"""

from __future__ import annotations

import logging
import shutil
import time
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
from care_companion.models.bundle import CHECKPOINT_FILE, ONNX_FILE, BundleMeta, Int8Report, Normalisation, save_meta
from care_companion.models.export import export_onnx
from care_companion.models.predictor import BundlePredictor, softmax
from care_companion.registry.gate import GateResult, check_gate
from care_companion.registry.models import register_bundle
from care_companion.registry.tracking import git_commit, start_run
from care_companion.storage import store_from_settings
from care_companion.tasks import TaskSpec
from care_companion.training.calibration import fit_temperature
from care_companion.training.distributed import train_on_ray
from care_companion.training.operating_point import choose_operating_point
from care_companion.training.trainer import TrainConfig, predict_logits, train_classifier
from care_companion.training.world import LocalWorld
from care_companion.workflows.ood_gate import build_ood_gate
from care_companion.workflows.profiling import build_profile
from care_companion.workflows.quantization import add_int8
from care_companion.workflows.scoring import item_probabilities

log = logging.getLogger(__name__)

EVALUATION_FILE = "evaluation.json"


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
    if len(task.views) == 1:
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
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    store = store_from_settings(settings)
    manifest = load_manifest(store, task.name, dataset_version)
    version = manifest.version
    images = build_cache(store, manifest, config.image_size, settings.cache_dir)
    splits = split_arrays(manifest, images, task)
    for needed in ("train", "val", "test"):
        if needed not in splits:
            raise DataError(f"data set {version} has no {needed} split; import more images")
    train = cap_per_class(splits["train"], config.max_train_per_class, config.seed)
    val, test = splits["val"], splits["test"]

    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = resume or f"{task.name}-{stamp}"
    tags = {"task": task.name, "dataset_version": version, "demo": str(demo).lower(), "checkpoint_name": name}
    with start_run(settings, experiment=task.name, run_name=f"{task.name}-{stamp}", tags=tags) as run:
        bundle_dir = settings.runs_dir / f"{task.name}-{stamp}-{run.run_id[:8]}"
        bundle_dir.mkdir(parents=True, exist_ok=True)
        params = config.model_dump(mode="json") | {
            "dataset_version": version,
            **{f"n_{name}": len(data) for name, data in splits.items()},
            "n_train_used": len(train),
            "workers": workers,
        }
        run.log_params(params)
        log.info("training run %s (continue it with --resume %s)", name, name)

        def on_epoch(metrics: dict[str, Any]) -> None:
            numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and k != "step"}
            run.log_metrics(numeric, step=int(metrics["step"]))

        checkpoints = settings.data_dir.resolve() / "checkpoints" / name
        if workers:
            model, result = train_on_ray(
                train,
                val,
                task,
                config,
                workers=workers,
                storage=settings.ray_storage_uri,
                name=name,
                on_epoch=on_epoch,
                address=ray_address,
            )
        else:
            world = LocalWorld(checkpoints)
            model, result = train_classifier(train, val, task, config, on_epoch=on_epoch, world=world)
        torch.save(model.state_dict(), bundle_dir / CHECKPOINT_FILE)

        val_logits = predict_logits(model, val, batch_size=64, mean=config.mean, std=config.std)
        temperature = fit_temperature(val_logits, val.labels)
        operating = choose_operating_point(
            softmax(val_logits, temperature), val.labels, task, target_sensitivity=settings.target_sensitivity
        )
        onnx_diff = export_onnx(model, bundle_dir / ONNX_FILE, input_size=config.image_size)
        meta = BundleMeta.for_task(
            task,
            backbone=config.backbone,
            input_size=config.image_size,
            normalisation=Normalisation(mean=config.mean, std=config.std),
            temperature=temperature,
            thresholds=operating.thresholds,
            target_sensitivity=settings.target_sensitivity,
            dataset_version=version,
            demo=demo,
            git_commit=git_commit(),
            run_id=run.run_id,
            training=params | {"init": result.init, "best": result.best, "onnx_max_abs_diff": onnx_diff},
        )
        save_meta(bundle_dir, meta)

        # the test split is scored by the exported ONNX bundle: the artifact that will be served
        probs = item_probabilities(BundlePredictor(bundle_dir), test)
        report = evaluate_predictions(
            test.labels, probs, task, operating.thresholds, groups=test.groups, seed=config.seed
        )
        (bundle_dir / EVALUATION_FILE).write_text(report.model_dump_json(indent=2))
        plots = write_plots(test.labels, probs, task, report, bundle_dir / "plots")
        metrics = summary_metrics(report, task)
        meta.metrics = metrics
        save_meta(bundle_dir, meta)
        quantized = None
        if int8:
            try:
                quantized = add_int8(bundle_dir, val, test, task, seed=config.seed)
                run.log_metrics({f"int8_test_{k}": v for k, v in quantized.test["int8"].items()})
                run.set_tags({"int8_preferred": str(quantized.preferred).lower()})
            except Exception as exc:  # INT8 is an option: its failure must not lose the trained model
                log.warning("INT8 quantisation failed, the bundle keeps only float32: %s", exc)
        try:  # stage: the out-of-distribution gate, fitted on the exported model's embeddings
            build_ood_gate(bundle_dir, task, train=train, val=val, seed=config.seed)
        except Exception as exc:  # the reject class still refuses; the service serves the bundle without the gate
            log.warning("no out-of-distribution gate: %s", exc)
        try:
            build_profile(bundle_dir, task, store=store, manifest=manifest, train=train, val=val, seed=config.seed)
        except Exception as exc:  # monitoring must not lose the trained model; the service reports it unavailable
            log.warning("no reference profile for drift monitoring: %s", exc)

        run.log_metrics(
            {f"test_{k}": v for k, v in metrics.items()}
            | {
                "temperature": temperature,
                "train_seconds": result.seconds,
                "images_per_second": result.images_per_second,
            }
            | {f"threshold_{k}": v for k, v in operating.thresholds.items()},
            step=len(result.history) + 1,
        )
        gate = check_gate(
            report.model_dump(mode="json"),
            positives=task.positives,
            min_sensitivity=settings.gate_min_sensitivity,
            min_auc=settings.gate_min_auc,
        )
        run.set_tags({"gate": "passed" if gate.passed else "refused"})
        registered = None
        if gate.passed and register:
            registered = register_bundle(bundle_dir, task=task.name, run_id=run.run_id, settings=settings)
        else:
            run.set_tags(
                {"needs_retraining": str(not gate.passed).lower(), "gate_shortfalls": "; ".join(gate.shortfalls)}
            )
            run.log_artifact(bundle_dir, artifact_path="bundle")
        for path in plots.values():
            run.log_artifact(path, artifact_path="plots")
        for warning in operating.warnings:
            log.warning("operating point: %s", warning)

    shutil.rmtree(checkpoints, ignore_errors=True)  # the run is complete: nothing left to resume
    return TrainOutcome(
        task=task.name,
        bundle_dir=bundle_dir,
        run_id=run.run_id,
        dataset_version=version,
        registered_version=registered,
        gate=gate,
        metrics=metrics,
        train_seconds=result.seconds,
        images_per_second=result.images_per_second,
        int8=quantized,
    )
