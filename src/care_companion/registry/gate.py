"""The registry gate: a model is registered only if every disease class meets the sensitivity floor and
the abnormal-vs-normal AUC meets its floor on the held-out test split."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, Field


class GateResult(BaseModel):
    """Outcome of the gate: pass/fail, human-readable shortfalls and every check's value and minimum."""

    passed: bool
    shortfalls: list[str] = Field(default_factory=list)
    checks: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per check: {'value': float | None, 'minimum': float, 'passed': bool}."
    )


def _number(value: Any) -> float | None:
    """A finite float, or None for missing, non-numeric or NaN values."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _fmt(value: float, below: float | None = None) -> str:
    """Two decimals, or more where needed to be exact, or (given ``below``) to still print below it."""
    for decimals in range(2, 7):
        text = f"{value:.{decimals}f}"
        if (below is None and abs(float(text) - value) < 1e-9) or (below is not None and float(text) < below):
            return text
    return f"{value:.6g}"


def check_gate(report: dict[str, Any], *, positives: list[str], min_sensitivity: float, min_auc: float) -> GateResult:
    """Check an evaluation report against the gate.

    Args:
        report: evaluation JSON with ``auc_abnormal`` and ``per_class[cls]["sensitivity"]``.
        positives: disease classes; each one's test sensitivity must reach ``min_sensitivity``.
        min_sensitivity: sensitivity floor for every disease class.
        min_auc: floor for the abnormal-vs-normal AUC.
    """
    checks: dict[str, dict[str, Any]] = {}
    shortfalls: list[str] = []

    def check(name: str, label: str, raw: Any, minimum: float) -> None:
        value = _number(raw)
        ok = value is not None and value >= minimum
        checks[name] = {"value": value, "minimum": minimum, "passed": ok}
        if value is None:
            shortfalls.append(f"{label} is missing from the evaluation report (required {_fmt(minimum)})")
        elif not ok:
            shortfalls.append(f"{label} {_fmt(value, minimum)} < required {_fmt(minimum)}")

    per_class = report.get("per_class") or {}
    for cls in positives:
        values = per_class.get(cls) or {}
        raw = values.get("sensitivity") if isinstance(values, dict) else None
        check(f"{cls}_sensitivity", f"{cls} sensitivity", raw, min_sensitivity)
    check("auc_abnormal", "abnormal-vs-normal AUC", report.get("auc_abnormal"), min_auc)
    return GateResult(passed=not shortfalls, shortfalls=shortfalls, checks=checks)
