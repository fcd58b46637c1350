"""Evaluate any model (bundle directory or registry URI) on labelled data: a class-folder tree for single-view
models (chest), a wrist source folder (GRAZPEDWRI-DX or FracAtlas layout) for multi-view study models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from care_companion.config import Settings
from care_companion.data.folders import scan_class_folders
from care_companion.data.patients import origin_and_patient
from care_companion.data.wrist import wrist_folder_items
from care_companion.errors import ConfigError, DataError, InvalidImageError
from care_companion.evaluation.metrics import EvaluationReport, evaluate_predictions
from care_companion.evaluation.plots import write_plots
from care_companion.imaging.decode import DecodeLimits, decode_file
from care_companion.imaging.preprocess import resize_square
from care_companion.models.predictor import BundlePredictor
from care_companion.parallel import parallel_map
from care_companion.registry.models import resolve_bundle
from care_companion.tasks import get_task
from care_companion.workflows.ood_gate import GATE_GROUP, gate_summary, gated_probabilities


class EvaluationRun(BaseModel):
    """An evaluation JSON plus what was skipped and where the outputs went."""

    report: EvaluationReport
    model: str
    bundle_dir: Path
    data_dir: Path
    skipped: list[dict[str, str]]
    multiview: bool = False
    json_path: Path | None = None
    plots: dict[str, Path] = {}
    ood_gate: dict[str, Any] | None = None  # films the bundle's out-of-distribution gate refuses; None: no gate


def _load(args: tuple[Path, int, DecodeLimits]) -> np.ndarray | InvalidImageError:
    path, size, limits = args
    try:
        return resize_square(decode_file(path, limits=limits), size)
    except InvalidImageError as exc:
        return exc


Scored = tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], list[dict[str, str]]]


def _decode_all(
    paths: list[Path], names: list[str], size: int, settings: Settings, workers: int
) -> tuple[list[np.ndarray | None], list[dict[str, str]]]:
    limits = DecodeLimits.from_settings(settings)
    work = [(path, size, limits) for path in paths]
    loaded = parallel_map(_load, work, workers=workers, description=f"decoding {len(paths)} images")
    images: list[np.ndarray | None] = []
    skipped = []
    for name, image in zip(names, loaded, strict=True):
        if isinstance(image, InvalidImageError):
            skipped.append({"path": name, "reason": image.reason, "detail": image.detail})
            images.append(None)
        else:
            images.append(image)
    return images, skipped


def _load_images(predictor: BundlePredictor, data_dir: Path, settings: Settings, workers: int) -> Scored:
    """Single-view models: every image of a class-folder tree, scored on its own."""
    task = get_task(predictor.meta.task)
    files, _ = scan_class_folders(data_dir, task)
    if not files:
        raise DataError(f"{data_dir}: no images under class folders named {', '.join(task.classes)}")
    images, skipped = _decode_all(
        [f.path for f in files], [f.relative for f in files], predictor.meta.input_size, settings, workers
    )
    kept = [(f, image) for f, image in zip(files, images, strict=True) if image is not None]
    if not kept:
        raise DataError(f"{data_dir}: none of the images could be decoded")
    probs, refused = gated_probabilities(predictor, predictor.preprocess([image for _, image in kept]))
    y = np.asarray([task.index(f.label) for f, _ in kept])
    origins = np.asarray([origin_and_patient(Path(f.relative).stem)[0] for f, _ in kept])
    return probs, y, {"origin": origins, **_gate_group(refused)}, skipped


def _load_studies(predictor: BundlePredictor, data_dir: Path, settings: Settings, workers: int) -> Scored:
    """Multi-view models: the studies of a wrist source folder (GRAZPEDWRI-DX or FracAtlas layout), each
    scored from the views it has; results are also broken down by those views."""
    task = get_task(predictor.meta.task)
    items, _ = wrist_folder_items(data_dir)
    paths = [item.path for item in items if item.path is not None]
    images, skipped = _decode_all(
        paths, [item.relative for item in items], predictor.meta.input_size, settings, workers
    )
    studies: dict[str, dict[str, np.ndarray]] = {}
    labels: dict[str, str] = {}
    sources: dict[str, str] = {}
    for item, image in zip(items, images, strict=True):
        if image is None:
            continue
        key = item.study_id or item.relative
        studies.setdefault(key, {})[item.view or task.views[0]] = image
        labels[key], sources[key] = item.label, item.source
    if not studies:
        raise DataError(f"{data_dir}: none of the images could be decoded")
    keys = list(studies)
    probs, refused = gated_probabilities(predictor, predictor.preprocess_studies([studies[k] for k in keys]))
    y = np.asarray([task.index(labels[k]) for k in keys])
    kinds = np.asarray(["+".join(v for v in task.views if v in studies[k]) for k in keys])
    groups = {"views": kinds, "source": np.asarray([sources[k] for k in keys]), **_gate_group(refused)}
    return probs, y, groups, skipped


def _gate_group(refused: np.ndarray | None) -> dict[str, np.ndarray]:
    """The gate's decision as a breakdown group ("refused" / "accepted"), when the bundle has a gate."""
    return {} if refused is None else {GATE_GROUP: np.where(refused, "refused", "accepted")}


def evaluate_model(
    model: str,
    data_dir: Path,
    *,
    settings: Settings,
    json_out: Path | None = None,
    plots_dir: Path | None = None,
    n_boot: int = 1000,
    workers: int = 2,
    task: str | None = None,
) -> EvaluationRun:
    """Score every labelled image under ``data_dir`` with ``model`` at its stored operating point.

    Args:
        model: a bundle directory or a registry URI (``models:/chest@staging``, ``models:/chest/3``).
        data_dir: class-folder tree; class names as the model's task uses (a two-class subset is fine).
        settings: where registry downloads are cached.
        json_out: write the evaluation JSON here.
        plots_dir: write ROC, confusion and reliability PNGs here.
        n_boot: bootstrap resamples for the 95% intervals.
        workers: decoding processes.
    """
    bundle_dir = resolve_bundle(model, settings)
    predictor = BundlePredictor(bundle_dir)
    meta = predictor.meta
    if task is not None and task != meta.task:
        raise ConfigError(f"{model} is a {meta.task} model, not a {task} model")
    spec = get_task(meta.task)
    if not Path(data_dir).is_dir():
        raise DataError(f"{data_dir}: data folder not found")
    load = _load_studies if meta.multiview else _load_images
    probs, y, groups, skipped = load(predictor, Path(data_dir), settings, workers)
    report = evaluate_predictions(y, probs, spec, meta.thresholds, groups=groups, n_boot=n_boot, seed=settings.seed)
    run = EvaluationRun(
        report=report,
        model=model,
        bundle_dir=bundle_dir,
        data_dir=Path(data_dir),
        skipped=skipped,
        multiview=meta.multiview,
        ood_gate=gate_summary(groups[GATE_GROUP] == "refused", y, spec) if GATE_GROUP in groups else None,
    )
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        payload = report.model_dump(mode="json") | {
            "model": model,
            "model_task": meta.task,
            "dataset_version": meta.dataset_version,
            "data_dir": str(data_dir),
            "skipped": skipped,
            "ood_gate": run.ood_gate,
        }
        json_out.write_text(json.dumps(payload, indent=2))
        run.json_path = json_out
    if plots_dir is not None:
        run.plots = write_plots(y, probs, spec, report, plots_dir)
    return run
