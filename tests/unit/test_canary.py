"""The canary share: a stable hash of the task and patient puts the configured share of patients on the canary,
the same on every replica and after every restart (another process agrees), and never an anonymous study."""

from __future__ import annotations

import subprocess
import sys

import pytest

from care_companion.registry.canary import patient_bucket, routes_to_canary


@pytest.mark.parametrize("percent", [1, 10, 50, 90])
def test_the_canary_share_over_10000_patients_is_within_a_point_of_the_setting(percent: float) -> None:
    share = sum(routes_to_canary("chest", patient, percent) for patient in range(10_000)) / 100
    assert abs(share - percent) <= 1.0, f"{share}% of patients on a {percent}% canary"


def test_a_patient_sees_the_same_model_in_another_process() -> None:
    """Another interpreter (another replica, or this one restarted, with its own hash seed) buckets alike."""
    code = (
        "from care_companion.registry.canary import patient_bucket; "
        "print([patient_bucket('chest', p) for p in range(200)])"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert other.stdout.strip() == str([patient_bucket("chest", p) for p in range(200)])


def test_no_patient_or_no_share_means_production_and_tasks_are_bucketed_apart() -> None:
    assert not routes_to_canary("chest", None, 100)
    assert not any(routes_to_canary("chest", p, 0) for p in range(1000))
    assert all(routes_to_canary("chest", p, 100) for p in range(1000))
    chest = {p for p in range(2000) if routes_to_canary("chest", p, 10)}
    wrist = {p for p in range(2000) if routes_to_canary("wrist", p, 10)}
    assert chest != wrist  # a patient on the chest canary is not thereby on every task's canary
