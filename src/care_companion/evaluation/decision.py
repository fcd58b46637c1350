"""The decision rule: calibrated probabilities and operating-point thresholds in, one class per image out.

1. If the task has a reject class and it is the arg-max, the image is rejected (not an image of this task).
2. Otherwise, if P(abnormal) (the sum of the disease probabilities) reaches ``thresholds["abnormal"]``, the
   image is flagged abnormal and labelled with its most probable disease.
3. Otherwise the negative (normal) class.

``thresholds["abnormal"]`` is chosen on validation data so that the disease films as a whole *and each
disease on its own* reach the target sensitivity (see ``training.operating_point``); the per-disease entries
record the threshold each disease alone would need. A disease film counts as detected when it is flagged
abnormal, whichever disease the label names: either way it goes to the radiologist as abnormal.

A missing ``abnormal`` threshold defaults to :data:`DEFAULT_THRESHOLD`. Arg-max ties go to the lowest index.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from care_companion.tasks import TaskSpec

DEFAULT_THRESHOLD = 0.5
ABNORMAL = "abnormal"


def _check_probs(probs: np.ndarray, task: TaskSpec) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(task.classes):
        raise ValueError(f"probs must have shape [N, {len(task.classes)}] for task {task.name!r}, got {probs.shape}")
    return probs


def resolve_thresholds(task: TaskSpec, thresholds: Mapping[str, float] | None) -> dict[str, float]:
    """The thresholds the rule uses: 'abnormal' and one per disease class, defaults filled in."""
    given = dict(thresholds or {})
    keys = [ABNORMAL, *task.positives]
    return {key: float(given.get(key, DEFAULT_THRESHOLD)) for key in keys}


def p_abnormal(probs: np.ndarray, task: TaskSpec) -> np.ndarray:
    """P(abnormal) per image: the sum of the probabilities of the task's disease classes, shape [N]."""
    probs = _check_probs(probs, task)
    return probs[:, task.positive_indices].sum(axis=1)


def decide(probs: np.ndarray, task: TaskSpec, thresholds: Mapping[str, float] | None) -> np.ndarray:
    """Decided class index per image (int64, shape [N]) for calibrated probabilities ``probs`` [N, C]."""
    probs = _check_probs(probs, task)
    thr = resolve_thresholds(task, thresholds)
    n = probs.shape[0]
    decided = np.full(n, task.index(task.negative), dtype=np.int64)
    pos = np.asarray(task.positive_indices, dtype=np.int64)
    if pos.size and n:
        disease = probs[:, pos]
        most_likely = pos[disease.argmax(axis=1)]
        abnormal = disease.sum(axis=1) >= thr[ABNORMAL]
        decided[abnormal] = most_likely[abnormal]
    if task.reject is not None and n:
        reject = task.index(task.reject)
        decided[probs.argmax(axis=1) == reject] = reject
    return decided
