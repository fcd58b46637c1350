"""From calibrated probabilities to what the service answers: label, decision and confidence level.

The decision is the same rule the evaluation uses (:func:`care_companion.evaluation.decision.decide`), with the
thresholds stored in the bundle, so the served result is the one that was measured.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

from care_companion.evaluation.decision import ABNORMAL, decide, p_abnormal, resolve_thresholds
from care_companion.tasks import TaskSpec


class Interpretation(BaseModel):
    """One image's decision, before request details (ids, timing, model) are added."""

    label: str
    rejected: bool
    probabilities: dict[str, float]
    positive: bool
    score: float
    threshold: float
    confidence: str
    confidence_reasons: list[str]


def decision_rule(task: TaskSpec, threshold: float) -> str:
    """The operating-point rule in words."""
    total = " + ".join(f"P({c})" for c in task.positives)
    return f"abnormal when {total} >= {threshold:.4f} (chosen on validation data for high sensitivity)"


def interpret(probs: np.ndarray, task: TaskSpec, thresholds: dict[str, float], *, margin: float) -> Interpretation:
    """Decide one image from its calibrated probabilities ``probs`` [C] and say how sure the decision is.

    Confidence is "low" when P(abnormal) lies within ``margin`` of its threshold (a small change would flip
    the decision) or when the two most probable classes are within ``margin`` of each other.

    Args:
        probs: calibrated probabilities of the task's classes for one image.
        task: the task (classes, positives, reject class).
        thresholds: the bundle's operating-point thresholds.
        margin: closeness, in probability, that makes a decision low-confidence.
    """
    row = np.asarray(probs, dtype=np.float64).reshape(1, -1)
    decided = int(decide(row, task, thresholds)[0])
    label = task.classes[decided]
    score = float(p_abnormal(row, task)[0])
    threshold = resolve_thresholds(task, thresholds)[ABNORMAL]
    rejected = task.reject is not None and label == task.reject
    reasons: list[str] = []
    if not rejected and abs(score - threshold) < margin:
        reasons.append(f"P(abnormal) {score:.3f} is within {margin:g} of the threshold {threshold:.3f}")
    top = np.sort(row[0])[::-1]
    if len(top) > 1 and top[0] - top[1] < margin:
        first, second = (task.classes[i] for i in np.argsort(row[0])[::-1][:2])
        reasons.append(f"the two most probable classes ({first}, {second}) are within {margin:g} of each other")
    return Interpretation(
        label=label,
        rejected=rejected,
        probabilities={c: round(float(p), 6) for c, p in zip(task.classes, row[0], strict=True)},
        positive=bool(label in task.positives),
        score=score,
        threshold=threshold,
        confidence="low" if reasons else "high",
        confidence_reasons=reasons,
    )
