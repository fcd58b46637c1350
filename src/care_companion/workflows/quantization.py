"""INT8 for a trained bundle: quantise on validation images, give it its own calibration and operating point,
compare it with float32, and record the verdict in ``bundle.json``.

The INT8 model is a different model, so (as for every new version) its temperature and thresholds are
chosen on validation data for the same target sensitivity. It becomes the served default
(``engine_precision=auto``) only when, each model at its own operating point, no sensitivity (abnormal, and
each disease) falls below float32's, on validation or on test: speed never buys a missed finding.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from care_companion.data.datasets import ArrayData
from care_companion.evaluation.metrics import evaluate_predictions
from care_companion.models.bundle import INT8_FILE, ONNX_FILE, Int8Report, load_meta, save_meta
from care_companion.models.predictor import BundlePredictor, softmax
from care_companion.models.quantize import quantize_int8
from care_companion.tasks import TaskSpec
from care_companion.training.calibration import fit_temperature
from care_companion.training.operating_point import choose_operating_point
from care_companion.workflows.scoring import item_logits, item_probabilities, model_feed

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
    """Quantise the bundle's model to INT8, calibrate it on validation, compare, record it in bundle.json.

    Args:
        bundle_dir: a bundle with ``model.onnx`` and its operating point.
        val: validation items and labels: activation ranges (a sample), temperature and thresholds.
        test: test images and labels: the reported comparison and the sensitivity check.
        task: the task.
        max_calibration: at most this many validation images calibrate the activation ranges.
        seed: seed of the calibration sample.
    """
    fp32 = BundlePredictor(bundle_dir, precision="fp32")
    meta = fp32.meta
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.permutation(len(val))[:max_calibration])
    quantize_int8(bundle_dir / ONNX_FILE, bundle_dir / INT8_FILE, model_feed(fp32, val, pick))
    int8 = BundlePredictor(bundle_dir, precision="int8")

    val_logits = item_logits(int8, val)
    temperature = fit_temperature(val_logits, val.labels)
    operating = choose_operating_point(
        softmax(val_logits, temperature), val.labels, task, target_sensitivity=meta.target_sensitivity
    )
    thresholds = dict(operating.thresholds)
    val_probs = softmax(val_logits, temperature)
    test_probs = softmax(item_logits(int8, test), temperature)
    scores = {
        "validation": {
            "fp32": _summary(val.labels, item_probabilities(fp32, val), task, meta.thresholds),
            "int8": _summary(val.labels, val_probs, task, thresholds),
        },
        "test": {
            "fp32": _summary(test.labels, item_probabilities(fp32, test), task, meta.thresholds),
            "int8": _summary(test.labels, test_probs, task, thresholds),
        },
    }
    problems = [
        f"{split}: {drop}"
        for split in scores
        for drop in _sensitivity_dropped(scores[split]["fp32"], scores[split]["int8"])
    ]
    report = Int8Report(
        calibration_images=len(pick),
        temperature=temperature,
        thresholds=thresholds,
        validation=scores["validation"],
        test=scores["test"],
        preferred=not problems,
        reason="every sensitivity kept" if not problems else "sensitivity fell: " + "; ".join(problems),
    )
    meta = load_meta(bundle_dir)
    meta.int8 = report
    save_meta(bundle_dir, meta)
    log.info("INT8 model: %s (%s)", "served by default" if report.preferred else "kept as an option", report.reason)
    return report
