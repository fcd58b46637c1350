"""The registry gate: every disease class's sensitivity and the abnormal AUC must reach their floors."""

from __future__ import annotations

from typing import Any

import pytest

from care_companion.registry.gate import GateResult, check_gate

POSITIVES = ["pneumonia", "tuberculosis"]


def report(auc: Any = 0.97, pneumonia: Any = 0.96, tuberculosis: Any = 0.98) -> dict[str, Any]:
    return {
        "auc_abnormal": auc,
        "per_class": {
            "normal": {"sensitivity": 0.5},  # the negative class is not gated
            "pneumonia": {"sensitivity": pneumonia, "specificity": 0.9},
            "tuberculosis": {"sensitivity": tuberculosis},
        },
    }


def gate(data: dict[str, Any]) -> GateResult:
    return check_gate(data, positives=POSITIVES, min_sensitivity=0.95, min_auc=0.90)


def test_pass() -> None:
    result = gate(report())
    assert result.passed
    assert result.shortfalls == []
    assert set(result.checks) == {"pneumonia_sensitivity", "tuberculosis_sensitivity", "auc_abnormal"}
    assert result.checks["auc_abnormal"] == {"value": 0.97, "minimum": 0.90, "passed": True}
    assert result.checks["tuberculosis_sensitivity"]["minimum"] == 0.95


def test_exactly_at_the_floor_passes() -> None:
    assert gate(report(auc=0.90, pneumonia=0.95, tuberculosis=0.95)).passed


def test_sensitivity_shortfall() -> None:
    result = gate(report(tuberculosis=0.89))
    assert not result.passed
    assert result.shortfalls == ["tuberculosis sensitivity 0.89 < required 0.95"]
    assert result.checks["tuberculosis_sensitivity"] == {"value": 0.89, "minimum": 0.95, "passed": False}
    assert result.checks["pneumonia_sensitivity"]["passed"]


def test_auc_shortfall() -> None:
    result = gate(report(auc=0.85))
    assert not result.passed
    assert len(result.shortfalls) == 1
    assert "AUC 0.85 < required 0.90" in result.shortfalls[0]


def test_every_shortfall_is_reported() -> None:
    result = gate(report(auc=0.5, pneumonia=0.7, tuberculosis=0.8))
    assert not result.passed
    assert len(result.shortfalls) == 3
    assert not any(check["passed"] for check in result.checks.values())


def test_near_miss_is_not_printed_as_equal() -> None:
    result = gate(report(pneumonia=0.9499))
    assert result.shortfalls == ["pneumonia sensitivity 0.9499 < required 0.95"]


@pytest.mark.parametrize("value", [None, float("nan"), "n/a"])
def test_missing_values_are_shortfalls(value: Any) -> None:
    result = gate(report(auc=value, tuberculosis=value))
    assert not result.passed
    assert len(result.shortfalls) == 2
    assert all("missing" in s for s in result.shortfalls)
    assert result.checks["auc_abnormal"]["value"] is None
    assert result.checks["tuberculosis_sensitivity"]["value"] is None


def test_absent_keys_are_shortfalls() -> None:
    result = check_gate({}, positives=POSITIVES, min_sensitivity=0.95, min_auc=0.9)
    assert not result.passed
    assert len(result.shortfalls) == 3
    data = report()
    del data["per_class"]["pneumonia"]
    result = gate(data)
    assert result.shortfalls == ["pneumonia sensitivity is missing from the evaluation report (required 0.95)"]


def test_result_serialises() -> None:
    result = gate(report(tuberculosis=None))
    assert GateResult.model_validate_json(result.model_dump_json()) == result
