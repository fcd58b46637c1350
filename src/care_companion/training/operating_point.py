"""The operating point: thresholds on calibrated validation probabilities chosen for a target sensitivity.

Every threshold is on P(abnormal), over images whose true class is not the reject class. For each disease
``d`` (positives = true ``d``) and for the diseases pooled (key ``"abnormal"``), the candidate is the HIGHEST
``t`` whose sensitivity ``P(score >= t | positive)`` reaches the target: the k-th largest positive score with
``k = ceil(target * n_pos)``. The per-disease candidates are stored under the disease names; the stored
``"abnormal"`` threshold, the one the decision rule uses, is the lowest candidate, so every disease on its own
reaches the target on validation. A key with no validation positives gets 0.5 and a warning.

Per-disease thresholds on the disease's own probability were tried first: with 15 tuberculosis films in
validation, one film the model found pneumonia-like set the tuberculosis threshold to 0.008 and flagged a
fifth of the normal films as tuberculosis. On P(abnormal) such a film is still caught as abnormal.

``choose_operating_point`` returns the full :class:`OperatingPoint`; ``choose_thresholds`` is a thin wrapper
returning only the thresholds.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, Field

from care_companion.evaluation.decision import p_abnormal
from care_companion.tasks import TaskSpec

ABNORMAL = "abnormal"
FALLBACK_THRESHOLD = 0.5


class OperatingPoint(BaseModel):
    """Thresholds chosen on validation data, with what they achieve there."""

    target_sensitivity: float
    thresholds: dict[str, float] = Field(description="'abnormal' and one per disease class.")
    val_sensitivity: dict[str, float | None] = Field(description="Sensitivity at each threshold on validation.")
    val_specificity: dict[str, float | None] = Field(description="Specificity at each threshold; None: no negatives.")
    n_positive: dict[str, int] = Field(description="Validation positives behind each threshold.")
    warnings: list[str] = Field(default_factory=list)


def threshold_for_sensitivity(positive_scores: np.ndarray, target: float) -> float:
    """Highest ``t`` with ``mean(positive_scores >= t) >= target``: the ``ceil(target * n)``-th largest score."""
    scores = np.sort(np.asarray(positive_scores, dtype=np.float64).reshape(-1))[::-1]
    if not scores.size:
        raise ValueError("no positive scores")
    # a small tolerance keeps e.g. 0.95 * 20 = 19.000000000000004 from rounding up to 20
    k = min(max(math.ceil(target * scores.size - 1e-9), 1), scores.size)
    return float(scores[k - 1])


def choose_operating_point(
    probs_val: np.ndarray, y_val: np.ndarray, task: TaskSpec, target_sensitivity: float = 0.95
) -> OperatingPoint:
    """Thresholds for ``task`` on calibrated validation probabilities ``probs_val`` [N, C] and labels ``y_val``."""
    if not 0.0 < target_sensitivity <= 1.0:
        raise ValueError(f"target_sensitivity must be in (0, 1], got {target_sensitivity}")
    probs = np.asarray(probs_val, dtype=np.float64)
    y = np.asarray(y_val).astype(np.int64).reshape(-1)
    if probs.ndim != 2 or probs.shape[1] != len(task.classes) or probs.shape[0] != y.shape[0]:
        raise ValueError(f"expected probs [N, {len(task.classes)}] and labels [N], got {probs.shape}, {y.shape}")
    keep = np.ones(y.shape[0], dtype=bool) if task.reject is None else y != task.index(task.reject)
    probs, y = probs[keep], y[keep]
    pos_idx = task.positive_indices
    score = p_abnormal(probs, task)
    problems = {ABNORMAL: (score, np.isin(y, pos_idx))}
    for name, idx in zip(task.positives, pos_idx, strict=True):
        problems[name] = (score, y == idx)

    point = OperatingPoint(
        target_sensitivity=target_sensitivity, thresholds={}, val_sensitivity={}, val_specificity={}, n_positive={}
    )
    for name, (score, positive) in problems.items():
        n_pos = int(positive.sum())
        point.n_positive[name] = n_pos
        if n_pos:
            t = threshold_for_sensitivity(score[positive], target_sensitivity)
        else:
            t = FALLBACK_THRESHOLD
            point.warnings.append(f"{name}: no positive images in validation; threshold falls back to {t}")
        flagged = score >= t
        negative = ~positive
        point.thresholds[name] = t
        point.val_sensitivity[name] = float(flagged[positive].mean()) if n_pos else None
        point.val_specificity[name] = float((~flagged[negative]).mean()) if negative.any() else None
    # one abnormal threshold that serves every disease: the lowest of the pooled and per-disease ones
    chosen = min(point.thresholds.values())
    if chosen < point.thresholds[ABNORMAL]:
        flagged = score >= chosen
        pooled = problems[ABNORMAL][1]
        point.thresholds[ABNORMAL] = chosen
        point.val_sensitivity[ABNORMAL] = float(flagged[pooled].mean()) if pooled.any() else None
        point.val_specificity[ABNORMAL] = float((~flagged[~pooled]).mean()) if (~pooled).any() else None
    return point


def choose_thresholds(
    probs_val: np.ndarray, y_val: np.ndarray, task: TaskSpec, target_sensitivity: float = 0.95
) -> dict[str, float]:
    """Only the thresholds of :func:`choose_operating_point`."""
    return choose_operating_point(probs_val, y_val, task, target_sensitivity).thresholds
