from __future__ import annotations

import math

import numpy as np
import pytest

from care_companion.evaluation.decision import p_abnormal
from care_companion.tasks import CHEST, TaskSpec
from care_companion.training.operating_point import (
    choose_operating_point,
    choose_thresholds,
    threshold_for_sensitivity,
)

KEYS = ["abnormal", "pneumonia", "tuberculosis"]


def _val(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    logits = rng.normal(size=(n, 4))
    logits[np.arange(n), y] += 1.0
    probs = np.exp(logits)
    return probs / probs.sum(axis=1, keepdims=True), y


def _problem(probs: np.ndarray, y: np.ndarray, key: str) -> tuple[np.ndarray, np.ndarray]:
    keep = y != CHEST.index("unknown")
    probs, y = probs[keep], y[keep]
    if key == "abnormal":
        return p_abnormal(probs, CHEST), np.isin(y, CHEST.positive_indices)
    return p_abnormal(probs, CHEST), y == CHEST.index(key)


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 0.99, 1.0])
def test_each_disease_threshold_reaches_target_and_is_highest(target: float):
    probs, y = _val()
    point = choose_operating_point(probs, y, CHEST, target_sensitivity=target)
    assert set(point.thresholds) == set(KEYS) and not point.warnings
    for key in KEYS[1:]:
        score, positive = _problem(probs, y, key)
        t = point.thresholds[key]
        sens = np.mean(score[positive] >= t)
        assert sens >= target
        assert point.val_sensitivity[key] == pytest.approx(sens)
        assert point.val_specificity[key] == pytest.approx(np.mean(score[~positive] < t))
        assert point.n_positive[key] == positive.sum()
        higher = score[positive][score[positive] > t]
        if higher.size:  # the next candidate above t misses the target
            assert np.mean(score[positive] >= higher.min()) < target
        k = math.ceil(target * positive.sum() - 1e-9)
        assert t == np.sort(score[positive])[::-1][k - 1]


@pytest.mark.parametrize("target", [0.8, 0.95, 1.0])
def test_abnormal_threshold_serves_every_disease(target: float):
    probs, y = _val(seed=3)
    point = choose_operating_point(probs, y, CHEST, target_sensitivity=target)
    t = point.thresholds["abnormal"]
    pooled_score, pooled = _problem(probs, y, "abnormal")
    pooled_candidate = threshold_for_sensitivity(pooled_score[pooled], target)
    assert t == min(pooled_candidate, point.thresholds["pneumonia"], point.thresholds["tuberculosis"])
    for key in KEYS:
        score, positive = _problem(probs, y, key)
        assert np.mean(score[positive] >= t) >= target
    assert point.val_sensitivity["abnormal"] == pytest.approx(np.mean(pooled_score[pooled] >= t))


def test_one_outlier_film_does_not_drag_a_disease_threshold_to_zero():
    # 15 tuberculosis films; one looks like pneumonia to the model (P(tb)=0.008, P(pneumonia)=0.41)
    tb = np.tile([0.05, 0.05, 0.88, 0.02], (15, 1))
    tb[0] = [0.58, 0.41, 0.008, 0.002]
    normal = np.tile([0.9, 0.05, 0.03, 0.02], (40, 1))
    probs, y = np.vstack([tb, normal]), np.array([2] * 15 + [0] * 40)
    point = choose_operating_point(probs, y, CHEST, target_sensitivity=0.95)
    assert point.thresholds["abnormal"] == pytest.approx(0.418)
    assert point.val_specificity["abnormal"] == 1.0


def test_exact_fraction_is_not_rounded_up():
    scores = np.arange(1, 21) / 20.0  # 20 positives; 0.95 * 20 = 19 (in floating point 19.000000000000004)
    assert threshold_for_sensitivity(scores, 0.95) == pytest.approx(0.10)
    assert threshold_for_sensitivity(scores, 1.0) == pytest.approx(0.05)
    assert threshold_for_sensitivity(np.array([0.3]), 0.95) == 0.3


def test_reject_images_are_ignored():
    probs, y = _val()
    base = choose_thresholds(probs, y, CHEST)
    extra = np.tile([[0.0, 0.0, 0.9, 0.1]], (50, 1))  # confident "tuberculosis" on non-X-rays
    with_reject = choose_thresholds(np.vstack([probs, extra]), np.r_[y, np.full(50, 3)], CHEST)
    assert with_reject == base


def test_missing_positives_fall_back_with_warning():
    probs, y = _val()
    keep = y != CHEST.index("tuberculosis")
    point = choose_operating_point(probs[keep], y[keep], CHEST)
    assert point.thresholds["tuberculosis"] == 0.5
    assert point.val_sensitivity["tuberculosis"] is None and point.n_positive["tuberculosis"] == 0
    assert len(point.warnings) == 1 and "tuberculosis" in point.warnings[0]
    assert point.thresholds["abnormal"] != 0.5


def test_task_without_reject_and_bad_input():
    task = TaskSpec(name="t", classes=["normal", "fracture"], negative="normal", positives=["fracture"])
    probs = np.array([[0.8, 0.2], [0.4, 0.6], [0.1, 0.9], [0.3, 0.7]])
    y = np.array([0, 1, 1, 1])
    assert choose_thresholds(probs, y, task, target_sensitivity=2 / 3) == {"abnormal": 0.7, "fracture": 0.7}
    with pytest.raises(ValueError):
        choose_thresholds(probs, y, task, target_sensitivity=0.0)
    with pytest.raises(ValueError):
        choose_thresholds(probs[:, :1], y, task)
