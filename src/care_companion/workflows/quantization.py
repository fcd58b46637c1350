"""INT8 for a trained bundle: quantise on validation images, compare with float32, record the verdict.

The INT8 model becomes the served default (``engine_precision=auto``) only when no sensitivity dropped,
neither on validation nor on test: speed never buys a missed finding.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from care_companion.data.datasets import ArrayData
from care_companion.evaluation.metrics import evaluate_predictions
from care_companion.models.bundle import INT8_FILE, ONNX_FILE, Int8Report, load_meta, save_meta
from care_companion.models.predictor import BundlePredictor
from care_companion.models.quantize import quantize_int8
from care_companion.tasks import TaskSpec

log = logging.getLogger(__name__)

# sensitivity may not fall by more than rounding noise
_TOLERANCE = 1e-9


def _summary(labels: np.ndarray, probs: np.ndarray, task: TaskSpec, thresholds: dict[str, float]) -> dict[str, float]:
    report = evaluate_predictions(labels, probs, task, thresholds, n_boot=0)
    out = {
        "auc_abnormal": report.auc_abnormal,
        "sensitivity_abnormal": report.sensitivity_abnormal,
        "specificity_abnormal": report.specificity_abnormal,
    }
    for cls in task.positives:
        if cls in report.per_class:
            out[f"{cls}_sensitivity"] = report.per_class[cls].sensitivity
    return {k: float(v) for k, v in out.items() if v is not None}


def _sensitivity_dropped(fp32: dict[str, float], int8: dict[str, float]) -> list[str]:
    return [
        f"{key} {fp32[key]:.3f} -> {int8[key]:.3f}"
        for key in fp32
        if "sensitivity" in key and key in int8 and int8[key] < fp32[key] - _TOLERANCE
    ]


def add_int8(
    bundle_dir: Path, val: ArrayData, test: ArrayData, task: TaskSpec, *, max_calibration: int = 256, seed: int = 0
) -> Int8Report:
    """Quantise the bundle's model to INT8 (calibrated on validation images), compare, record it in bundle.json.

    Args:
        bundle_dir: a bundle with ``model.onnx`` and its operating point.
        val: validation images and labels (calibration, and the first sensitivity check).
        test: test images and labels (the reported comparison, and the second check).
        task: the task.
        max_calibration: at most this many validation images calibrate the activation scales.
        seed: seed of the calibration sample.
    """
    fp32 = BundlePredictor(bundle_dir, precision="fp32")
    meta = fp32.meta
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.permutation(len(val))[:max_calibration])
    calibration = fp32.preprocess(list(val.images[pick]))
    quantize_int8(bundle_dir / ONNX_FILE, bundle_dir / INT8_FILE, calibration)
    int8 = BundlePredictor(bundle_dir, precision="int8")
    thresholds = dict(meta.thresholds)
    scores: dict[str, dict[str, dict[str, float]]] = {}
    for name, data in (("validation", val), ("test", test)):
        images = list(data.images)
        scores[name] = {
            "fp32": _summary(data.labels, fp32.predict_proba(images), task, thresholds),
            "int8": _summary(data.labels, int8.predict_proba(images), task, thresholds),
        }
    drops = [
        f"{name}: {d}" for name in scores for d in _sensitivity_dropped(scores[name]["fp32"], scores[name]["int8"])
    ]
    report = Int8Report(
        calibration_images=len(pick),
        validation=scores["validation"],
        test=scores["test"],
        preferred=not drops,
        reason="no sensitivity dropped on validation or test"
        if not drops
        else "sensitivity dropped: " + "; ".join(drops),
    )
    meta = load_meta(bundle_dir)
    meta.int8 = report
    save_meta(bundle_dir, meta)
    log.info("INT8 model: %s (%s)", "served by default" if report.preferred else "kept as an option", report.reason)
    return report
