"""From calibrated probabilities to the served decision: label, positive/normal/rejected and confidence level."""

from __future__ import annotations

import numpy as np
import pytest

from care_companion.models.bundle import BundleMeta
from care_companion.serving.results import Interpretation, decision_rule, interpret
from care_companion.tasks import CHEST

# class order: normal, pneumonia, tuberculosis, unknown
THRESHOLDS = {"abnormal": 0.5, "pneumonia": 0.5, "tuberculosis": 0.5}
MARGIN = 0.1


def _interpret(
    probs: list[float], thresholds: dict[str, float] | None = None, margin: float = MARGIN
) -> Interpretation:
    return interpret(np.array(probs), CHEST, THRESHOLDS if thresholds is None else thresholds, margin=margin)


def test_task_of_rebuilds_the_task_from_bundle_metadata() -> None:
    meta = BundleMeta.for_task(CHEST, backbone="resnet18", input_size=64, thresholds=THRESHOLDS)
    task = meta.task_spec()
    assert task.name == "chest"
    assert task.classes == ["normal", "pneumonia", "tuberculosis", "unknown"]
    assert task.negative == "normal" and task.positives == ["pneumonia", "tuberculosis"]
    assert task.reject == "unknown" and task.views == ["frontal"]
    spec = CHEST.model_copy(update={"classes": ["normal", "fracture"], "positives": ["fracture"], "reject": None})
    other = meta.model_copy(update={"spec": spec})
    assert other.task_spec().positive_indices == [1] and other.task_spec().reject is None


def test_decision_rule_names_the_disease_classes_and_threshold() -> None:
    rule = decision_rule(CHEST, 0.3125)
    assert "P(pneumonia) + P(tuberculosis) >= 0.3125" in rule
    assert "P(unknown)" not in rule and "P(normal)" not in rule
    assert rule.startswith("abnormal when")


def test_positive_labelled_with_the_most_probable_disease() -> None:
    found = _interpret([0.1, 0.5, 0.3, 0.1])
    assert found.positive and not found.rejected
    assert found.label == "pneumonia"
    assert found.score == pytest.approx(0.8) and found.threshold == 0.5
    assert found.confidence == "high" and found.confidence_reasons == []
    assert _interpret([0.15, 0.25, 0.55, 0.05]).label == "tuberculosis"


def test_positive_even_when_normal_is_the_single_most_probable_class() -> None:
    # P(abnormal) = 0.25 + 0.2 = 0.45 reaches a sensitive threshold of 0.3 although P(normal) = 0.5 is the arg-max
    found = _interpret([0.5, 0.25, 0.2, 0.05], {"abnormal": 0.3})
    assert found.positive and found.label == "pneumonia"
    assert found.score == pytest.approx(0.45) and found.threshold == 0.3


def test_score_exactly_at_threshold_is_positive_and_just_below_is_normal() -> None:
    at = _interpret([0.5, 0.25, 0.25, 0.0])
    assert at.score == 0.5 and at.positive and at.label in ("pneumonia", "tuberculosis")
    below = _interpret([0.52, 0.24, 0.24, 0.0])
    assert not below.positive and below.label == "normal" and not below.rejected


def test_normal_below_threshold() -> None:
    found = _interpret([0.8, 0.1, 0.05, 0.05])
    assert found.label == "normal" and not found.positive and not found.rejected
    assert found.score == pytest.approx(0.15)
    assert found.confidence == "high"


def test_rejected_when_unknown_is_the_arg_max_even_if_the_disease_score_is_high() -> None:
    found = _interpret([0.05, 0.3, 0.25, 0.4])  # P(abnormal) = 0.55 >= 0.5, but "unknown" is the most probable
    assert found.rejected and found.label == "unknown"
    assert not found.positive
    assert not any("threshold" in r for r in found.confidence_reasons)  # no decision was made to be near
    clear = _interpret([0.05, 0.05, 0.05, 0.85])
    assert clear.rejected and clear.confidence == "high"


def test_unknown_not_the_arg_max_is_not_rejected() -> None:
    found = _interpret([0.1, 0.45, 0.1, 0.35])
    assert not found.rejected and found.label == "pneumonia"


def test_low_confidence_near_the_threshold() -> None:
    found = _interpret([0.45, 0.4, 0.15, 0.0])  # score 0.55, within 0.1 of 0.5; top two 0.05 apart as well
    assert found.positive and found.confidence == "low"
    assert any("threshold" in r and "0.550" in r for r in found.confidence_reasons)
    just_normal = _interpret([0.62, 0.3, 0.05, 0.03])  # score 0.35 -> 0.15 away: high
    assert just_normal.confidence == "high"
    below = _interpret([0.7, 0.2, 0.05, 0.05])  # score 0.25, far; top two far
    assert below.confidence == "high"
    near_below = _interpret([0.58, 0.22, 0.2, 0.0])  # score 0.42, 0.08 below the threshold: normal, low
    assert not near_below.positive and near_below.confidence == "low"
    assert len(near_below.confidence_reasons) == 1 and "threshold" in near_below.confidence_reasons[0]


def test_low_confidence_when_the_top_two_classes_are_close() -> None:
    found = _interpret([0.1, 0.42, 0.38, 0.1])  # score 0.8 is far from 0.5, but pneumonia vs tuberculosis is close
    assert found.positive and found.label == "pneumonia"
    assert found.confidence == "low"
    assert len(found.confidence_reasons) == 1
    assert "pneumonia" in found.confidence_reasons[0] and "tuberculosis" in found.confidence_reasons[0]


def test_both_reasons_listed_when_both_apply() -> None:
    found = _interpret([0.46, 0.44, 0.1, 0.0])
    assert found.confidence == "low" and len(found.confidence_reasons) == 2


def test_margin_controls_what_counts_as_close() -> None:
    probs = [0.1, 0.42, 0.38, 0.1]
    assert _interpret(probs, margin=0.1).confidence == "low"
    assert _interpret(probs, margin=0.03).confidence == "high"


def test_probabilities_are_reported_per_class_and_missing_abnormal_threshold_defaults() -> None:
    found = _interpret([0.1234567, 0.6, 0.2, 0.0765433], {})
    assert list(found.probabilities) == CHEST.classes
    assert found.probabilities["normal"] == 0.123457
    assert found.threshold == 0.5  # the documented default when the bundle has no "abnormal" threshold
