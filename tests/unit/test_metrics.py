from __future__ import annotations

import json
import time

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score, roc_auc_score

from care_companion.evaluation.decision import decide, p_abnormal, resolve_thresholds
from care_companion.evaluation.metrics import evaluate_predictions
from care_companion.tasks import CHEST, TaskSpec

THRESHOLDS = {"abnormal": 0.4, "pneumonia": 0.5, "tuberculosis": 0.45}
REQUIRED_KEYS = {
    "n", "classes", "auc_abnormal", "sensitivity_abnormal", "specificity_abnormal", "per_class", "intervals",
    "confusion_matrix", "confusion_labels", "ece", "thresholds", "n_per_class", "reject_rate_xray",
    "reject_recall", "by_group",
}  # fmt: skip


def _data(n: int = 600, seed: int = 0, classes: int = 4, signal: float = 1.5):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, 4))
    logits[np.arange(n), y] += signal
    probs = np.exp(logits)
    return y, probs / probs.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------ decision rule


@pytest.mark.parametrize(
    ("probs", "expected"),
    [
        ([0.10, 0.20, 0.20, 0.50], "unknown"),  # reject class is the arg-max
        ([0.30, 0.30, 0.05, 0.35], "unknown"),  # ... even when P(abnormal) reaches its threshold
        ([0.40, 0.55, 0.05, 0.00], "pneumonia"),  # flagged abnormal: the most probable disease
        ([0.00, 0.48, 0.50, 0.02], "tuberculosis"),
        ([0.00, 0.55, 0.45, 0.00], "pneumonia"),
        ([0.55, 0.30, 0.15, 0.00], "pneumonia"),  # P(abnormal) 0.45 >= 0.4: most likely disease
        ([0.62, 0.10, 0.28, 0.00], "normal"),  # P(abnormal) 0.38 < 0.4
        ([0.60, 0.00, 0.40, 0.00], "tuberculosis"),  # P(abnormal) == threshold counts as positive
    ],
)
def test_decision_rule_cases(probs: list[float], expected: str):
    thresholds = {"abnormal": 0.4, "pneumonia": 0.5, "tuberculosis": 0.45}
    assert CHEST.classes[int(decide(np.array([probs]), CHEST, thresholds)[0])] == expected


def test_decision_defaults_and_p_abnormal():
    probs = np.array([[0.45, 0.30, 0.25, 0.0], [0.55, 0.25, 0.20, 0.0]])
    np.testing.assert_allclose(p_abnormal(probs, CHEST), [0.55, 0.45])
    assert decide(probs, CHEST, {}).tolist() == [1, 0]  # all thresholds default to 0.5
    assert resolve_thresholds(CHEST, {"pneumonia": 0.2}) == {"abnormal": 0.5, "pneumonia": 0.2, "tuberculosis": 0.5}
    assert decide(np.zeros((0, 4)), CHEST, {}).shape == (0,)
    with pytest.raises(ValueError):
        decide(np.zeros((2, 3)), CHEST, {})


def test_decision_matches_a_loop():
    _, probs = _data(300, seed=5)
    got = decide(probs, CHEST, THRESHOLDS)
    for p, d in zip(probs, got, strict=True):
        if p.argmax() == 3:
            expected = 3
        elif p[1] + p[2] >= THRESHOLDS["abnormal"]:
            expected = 1 if p[1] >= p[2] else 2
        else:
            expected = 0
        assert d == expected


# ---------------------------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("seed", [0, 1])
def test_metrics_match_sklearn(seed: int):
    y, probs = _data(seed=seed)
    report = evaluate_predictions(y, probs, CHEST, THRESHOLDS, n_boot=50, seed=seed)
    data = json.loads(report.model_dump_json())
    assert set(data) >= REQUIRED_KEYS
    decided = decide(probs, CHEST, THRESHOLDS)
    labels = list(range(4))
    np.testing.assert_array_equal(report.confusion_matrix, confusion_matrix(y, decided, labels=labels))
    assert report.confusion_labels == report.classes == CHEST.classes
    recall = recall_score(y, decided, labels=labels, average=None)
    precision = precision_score(y, decided, labels=labels, average=None)
    f1 = f1_score(y, decided, labels=labels, average=None)
    for c, name in enumerate(CHEST.classes):
        m = report.per_class[name]
        assert m.n == report.n_per_class[name] == (y == c).sum()
        assert m.label_sensitivity == pytest.approx(recall[c])
        detected = np.isin(decided, [1, 2]) if c in (1, 2) else decided == c  # diseases: flagged abnormal
        assert m.sensitivity == pytest.approx(recall_score(y == c, detected))
        assert m.precision == pytest.approx(precision[c])
        assert m.f1 == pytest.approx(f1[c])
        assert m.specificity == pytest.approx(recall_score(y != c, decided != c))
        assert m.auc == pytest.approx(roc_auc_score(y == c, probs[:, c]))
    keep = y != 3
    truth = np.isin(y[keep], [1, 2])
    flagged = np.isin(decided[keep], [1, 2])
    assert report.auc_abnormal == pytest.approx(roc_auc_score(truth, p_abnormal(probs, CHEST)[keep]))
    assert report.sensitivity_abnormal == pytest.approx(recall_score(truth, flagged))
    assert report.specificity_abnormal == pytest.approx(recall_score(~truth, ~flagged))
    assert report.reject_rate_xray == pytest.approx(np.mean(decided[keep] == 3))
    assert report.reject_recall == pytest.approx(np.mean(decided[~keep] == 3))
    assert report.n == len(y) and report.thresholds == THRESHOLDS


def test_hand_made_case_with_ties_and_reject_as_miss():
    probs = np.array(
        [
            [0.90, 0.05, 0.05, 0.00],  # normal -> normal
            [0.50, 0.25, 0.25, 0.00],  # normal -> abnormal (P = 0.5): pneumonia (tie goes to the first)
            [0.20, 0.70, 0.10, 0.00],  # pneumonia -> pneumonia
            [0.10, 0.10, 0.10, 0.70],  # tuberculosis -> rejected: counts as missed
            [0.50, 0.25, 0.25, 0.00],  # tuberculosis -> pneumonia (tied score with image 1)
            [0.00, 0.00, 0.10, 0.90],  # unknown -> unknown
        ]
    )
    y = np.array([0, 0, 1, 2, 2, 3])
    report = evaluate_predictions(y, probs, CHEST, {}, n_boot=0)
    assert report.confusion_matrix == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 1, 0, 1], [0, 0, 0, 1]]
    assert report.sensitivity_abnormal == pytest.approx(2 / 3)
    assert report.specificity_abnormal == pytest.approx(1 / 2)
    assert report.auc_abnormal == pytest.approx(roc_auc_score([0, 0, 1, 1, 1], [0.1, 0.5, 0.8, 0.2, 0.5]))
    assert report.per_class["tuberculosis"].sensitivity == 0.5  # one rejected (missed), one flagged abnormal
    assert report.per_class["tuberculosis"].label_sensitivity == 0.0
    assert report.per_class["tuberculosis"].precision is None  # never decided
    assert report.per_class["tuberculosis"].f1 == 0.0
    assert report.reject_rate_xray == pytest.approx(1 / 5) and report.reject_recall == 1.0
    assert report.intervals == {}


def test_intervals_contain_point_estimates_and_are_seeded():
    y, probs = _data(seed=2)
    report = evaluate_predictions(y, probs, CHEST, THRESHOLDS, n_boot=300, seed=4)
    names = ["auc_abnormal", "sensitivity_abnormal", "specificity_abnormal"]
    names += [f"{c}_{m}" for c in CHEST.classes for m in ("sensitivity", "label_sensitivity", "specificity", "auc")]
    assert set(report.intervals) == set(names)
    data = report.model_dump()
    for name in names:
        cls = next(c for c in CHEST.classes if name.startswith(f"{c}_")) if name not in data else None
        point = data[name] if cls is None else data["per_class"][cls][name[len(cls) + 1 :]]
        low, high = report.intervals[name]
        assert 0.0 <= low <= point <= high <= 1.0
        assert high - low < 0.25
    again = evaluate_predictions(y, probs, CHEST, THRESHOLDS, n_boot=300, seed=4)
    assert again.intervals == report.intervals
    other = evaluate_predictions(y, probs, CHEST, THRESHOLDS, n_boot=300, seed=5)
    assert other.intervals != report.intervals


def test_bootstrap_auc_is_a_weighted_auc():
    """The bootstrap's weighted AUC equals sklearn's AUC on the explicitly resampled data."""
    from care_companion.evaluation.metrics import _auc

    rng = np.random.default_rng(0)
    score = np.round(rng.random(80), 1)  # many ties
    positive = rng.random(80) < 0.4
    idx = rng.integers(0, 80, 80)
    weights = np.bincount(idx, minlength=80)[None, :].astype(float)
    got = _auc(weights, score, positive, np.ones(80, dtype=bool))[0]
    assert got == pytest.approx(roc_auc_score(positive[idx], score[idx]))


def test_bootstrap_is_fast():
    y, probs = _data(600, seed=3)
    start = time.perf_counter()
    evaluate_predictions(y, probs, CHEST, THRESHOLDS, n_boot=1000, groups={"source": y % 2})
    assert time.perf_counter() - start < 5.0


def test_two_class_data_set():
    y, probs = _data(200, seed=6, classes=2)  # only normal / pneumonia; the model still outputs 4 classes
    report = evaluate_predictions(y, probs, CHEST, THRESHOLDS, n_boot=100)
    data = json.loads(report.model_dump_json())
    assert data["n_per_class"] == {"normal": int((y == 0).sum()), "pneumonia": int((y == 1).sum()),
                                   "tuberculosis": 0, "unknown": 0}  # fmt: skip
    for name in ("tuberculosis", "unknown"):
        assert data["per_class"][name]["sensitivity"] is None
        assert data["per_class"][name]["auc"] is None
        assert data["intervals"][f"{name}_sensitivity"] is None
    assert data["per_class"]["tuberculosis"]["specificity"] is not None
    assert data["reject_recall"] is None and data["reject_rate_xray"] is not None
    decided = decide(probs, CHEST, THRESHOLDS)
    assert data["sensitivity_abnormal"] == pytest.approx(recall_score(y == 1, np.isin(decided, [1, 2])))
    assert data["auc_abnormal"] == pytest.approx(roc_auc_score(y == 1, p_abnormal(probs, CHEST)))
    assert data["intervals"]["auc_abnormal"] is not None


def test_by_group_matches_subset_reports():
    y, probs = _data(400, seed=7)
    source = np.where(np.arange(400) % 3 == 0, "kermany", "cxr")
    report = evaluate_predictions(y, probs, CHEST, THRESHOLDS, groups={"source": source}, n_boot=0)
    assert set(report.by_group["source"]) == {"kermany", "cxr"}
    for value, summary in report.by_group["source"].items():
        sub = evaluate_predictions(y[source == value], probs[source == value], CHEST, THRESHOLDS, n_boot=0)
        assert summary.n == sub.n
        assert summary.auc_abnormal == pytest.approx(sub.auc_abnormal)
        assert summary.sensitivity_abnormal == pytest.approx(sub.sensitivity_abnormal)
        assert summary.specificity_abnormal == pytest.approx(sub.specificity_abnormal)
        assert summary.sensitivity == {c: sub.per_class[c].sensitivity for c in CHEST.classes}
    with pytest.raises(ValueError):
        evaluate_predictions(y, probs, CHEST, THRESHOLDS, groups={"source": source[:-1]}, n_boot=0)


def test_task_without_reject_class():
    task = TaskSpec(name="wrist", classes=["normal", "fracture"], negative="normal", positives=["fracture"])
    y = np.array([0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]])
    report = evaluate_predictions(y, probs, task, {"abnormal": 0.5, "fracture": 0.5}, n_boot=20)
    assert report.sensitivity_abnormal == pytest.approx(2 / 3)
    assert report.specificity_abnormal == pytest.approx(1 / 2)
    assert report.reject_rate_xray is None and report.reject_recall is None


def test_bad_input():
    y, probs = _data(10)
    with pytest.raises(ValueError):
        evaluate_predictions(y, probs[:, :3], CHEST, {})
    with pytest.raises(ValueError):
        evaluate_predictions(y + 4, probs, CHEST, {})
    with pytest.raises(ValueError):
        evaluate_predictions(y[:0], probs[:0], CHEST, {})
