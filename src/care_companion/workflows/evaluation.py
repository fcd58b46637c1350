"""Evaluate any model (bundle directory or registry URI) on any labelled class-folder tree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from care_companion.config import Settings
from care_companion.data.folders import scan_class_folders
from care_companion.data.patients import origin_and_patient
from care_companion.errors import DataError, InvalidImageError
from care_companion.evaluation.metrics import EvaluationReport, evaluate_predictions
from care_companion.evaluation.plots import write_plots
from care_companion.imaging.decode import decode_file
from care_companion.imaging.preprocess import resize_square
from care_companion.models.predictor import BundlePredictor
from care_companion.parallel import parallel_map
from care_companion.registry.models import resolve_bundle
from care_companion.tasks import get_task


class EvaluationRun(BaseModel):
    """An evaluation JSON plus what was skipped and where the outputs went."""

    report: EvaluationReport
    model: str
    bundle_dir: Path
    data_dir: Path
    skipped: list[dict[str, str]]
    json_path: Path | None = None
    plots: dict[str, Path] = {}


def _load(args: tuple[Path, int, int, int]) -> np.ndarray | InvalidImageError:
    path, size, min_side, max_pixels = args
    try:
        return resize_square(decode_file(path, min_side=min_side, max_pixels=max_pixels), size)
    except InvalidImageError as exc:
        return exc


def evaluate_model(
    model: str,
    data_dir: Path,
    *,
    settings: Settings,
    json_out: Path | None = None,
    plots_dir: Path | None = None,
    n_boot: int = 1000,
    workers: int = 2,
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
    task = get_task(meta.task)
    if not Path(data_dir).is_dir():
        raise DataError(f"{data_dir}: data folder not found")
    files, _ = scan_class_folders(Path(data_dir), task)
    if not files:
        raise DataError(f"{data_dir}: no images under class folders named {', '.join(task.classes)}")
    work = [(f.path, meta.input_size, settings.min_image_side, settings.max_image_pixels) for f in files]
    images, labels, origins, skipped = [], [], [], []
    loaded = parallel_map(_load, work, workers=workers, description=f"decoding {len(files)} images")
    for f, image in zip(files, loaded, strict=True):
        if isinstance(image, InvalidImageError):
            skipped.append({"path": f.relative, "reason": image.reason, "detail": image.detail})
            continue
        images.append(image)
        labels.append(task.index(f.label))
        origins.append(origin_and_patient(Path(f.relative).stem)[0])
    if not images:
        raise DataError(f"{data_dir}: none of the images could be decoded")
    probs = predictor.predict_proba(images)
    y = np.asarray(labels)
    report = evaluate_predictions(
        y, probs, task, meta.thresholds, groups={"origin": np.asarray(origins)}, n_boot=n_boot, seed=settings.seed
    )
    run = EvaluationRun(report=report, model=model, bundle_dir=bundle_dir, data_dir=Path(data_dir), skipped=skipped)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        payload = report.model_dump(mode="json") | {
            "model": model,
            "model_task": meta.task,
            "dataset_version": meta.dataset_version,
            "data_dir": str(data_dir),
            "skipped": skipped,
        }
        json_out.write_text(json.dumps(payload, indent=2))
        run.json_path = json_out
    if plots_dir is not None:
        run.plots = write_plots(y, probs, task, report, plots_dir)
    return run
