"""The canary report's decision rule, its intervals and its latency percentile, without a registry or database."""

from __future__ import annotations

import pytest

from care_companion.config import Settings
from care_companion.records.models import LATENCY_BUCKETS_MS
from care_companion.release.report import VersionEvidence, histogram_percentile, judge, wilson


def evidence(
    alias: str, *, detected: int, diseased: int, studies: int, requests: int = 200, errors: int = 0, p95: float = 50.0
) -> VersionEvidence:
    return VersionEvidence(
        version=2 if alias == "canary" else 1,
        alias=alias,
        confirmed_studies=studies,
        shadowed_studies=0,
        sensitivity=wilson(detected, diseased),
        specificity=wilson(studies - diseased, studies - diseased),
        requests=requests,
        refused=0,
        error_rate=wilson(errors, requests),
        latency_ms_p95=p95,
        drift_checks=0,
        drifted_checks=0,
        latest_drift=None,
    )


SETTINGS = Settings(release_min_canary_studies=30, release_alpha=0.05, release_max_latency_increase=0.25)


def test_wilson_interval_matches_a_textbook_value_and_handles_the_edges() -> None:
    rate = wilson(8, 10)  # Wilson 95% for 8/10: 0.490 - 0.943
    assert (
        rate.value == 0.8 and rate.low == pytest.approx(0.490, abs=1e-3) and rate.high == pytest.approx(0.943, abs=1e-3)
    )
    assert wilson(10, 10).high == pytest.approx(1.0) and wilson(10, 10).low == pytest.approx(0.722, abs=1e-3)
    assert wilson(0, 0).value is None


def test_latency_percentile_interpolates_inside_the_histogram_bucket() -> None:
    counts = [0] * (len(LATENCY_BUCKETS_MS) + 1)
    counts[LATENCY_BUCKETS_MS.index(50)] = 100  # 100 requests between 30 and 50 ms
    assert histogram_percentile(counts, 95) == pytest.approx(30 + 20 * 0.95)
    counts[-1] = 100  # as many beyond the last edge
    assert histogram_percentile(counts, 95) == float(LATENCY_BUCKETS_MS[-1])
    assert histogram_percentile([0] * len(counts), 95) is None


def test_a_better_or_equal_canary_with_enough_confirmed_studies_is_promoted() -> None:
    verdict, reasons, p = judge(
        evidence("canary", detected=20, diseased=20, studies=40),
        evidence("production", detected=180, diseased=190, studies=400),
        SETTINGS,
    )
    assert verdict == "promote" and p["sensitivity"] > 0.5, reasons


def test_a_canary_missing_disease_or_failing_more_or_slower_is_rolled_back() -> None:
    production = evidence("production", detected=190, diseased=200, studies=400, errors=1, requests=2000)
    worse = judge(evidence("canary", detected=14, diseased=20, studies=40), production, SETTINGS)
    assert worse[0] == "rollback" and "sensitivity" in worse[1][0] and worse[2]["sensitivity"] < 0.05
    failing = judge(evidence("canary", detected=20, diseased=20, studies=40, errors=12), production, SETTINGS)
    assert failing[0] == "rollback" and "error rate" in failing[1][0]
    slow = judge(evidence("canary", detected=20, diseased=20, studies=40, p95=70.0), production, SETTINGS)
    assert slow[0] == "rollback" and "latency" in slow[1][0]
    within = judge(evidence("canary", detected=20, diseased=20, studies=40, p95=60.0), production, SETTINGS)
    assert within[0] == "promote"  # 20% slower: inside the 25% allowed


def test_too_little_evidence_waits_and_says_what_is_missing() -> None:
    production = evidence("production", detected=190, diseased=200, studies=400)
    few = judge(evidence("canary", detected=5, diseased=5, studies=10), production, SETTINGS)
    assert few[0] == "wait" and "fewer than the 30 required" in few[1][0]
    healthy_only = judge(evidence("canary", detected=0, diseased=0, studies=40), production, SETTINGS)
    assert healthy_only[0] == "wait" and "sensitivity is unknown" in healthy_only[1][0]
    quiet = judge(evidence("canary", detected=20, diseased=20, studies=40, requests=10), production, SETTINGS)
    assert quiet[0] == "wait" and "requests" in quiet[1][0]
    first = judge(evidence("canary", detected=20, diseased=20, studies=40), None, SETTINGS)
    assert first[0] == "promote"  # no production yet: nothing to compare with
