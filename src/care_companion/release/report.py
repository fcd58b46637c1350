"""The canary report and its decision rule (``care-companion release status``, ``GET /v1/releases/{task}``, the
dashboard's release panel, ``release promote --auto``).

Over the canary window (since the canary version was last promoted to canary; all time when no such move is on
record), for production and the canary each:

* sensitivity and specificity from radiologists' verdicts on the studies the version answered, and, for the
  canary, on the studies it scored in shadow mode, with counts and 95% Wilson intervals;
* error rate (failed requests / requests, Wilson interval), refusals and the p95 latency of its served requests,
  summed over every replica's traffic counts (``serving_stats``);
* its drift checks (how many, how many drifted, the latest verdict);

and the agreement of the two models on the films the canary shadowed. The rule:

* **rollback** when the canary is significantly worse: its sensitivity below production's, or its error rate
  above production's (one-sided Fisher exact tests, p < ``CARE_RELEASE_ALPHA``), or its p95 latency more than
  ``CARE_RELEASE_MAX_LATENCY_INCREASE`` above production's (both with at least
  ``CARE_RELEASE_MIN_CANARY_STUDIES`` requests);
* **promote** when nothing says rollback, at least ``CARE_RELEASE_MIN_CANARY_STUDIES`` canary studies were
  confirmed and one of them at least was diseased (without a positive, sensitivity is unknown);
* **wait** otherwise, saying what is missing.

Fisher's exact test suits the small counts a canary share gives. Films scored in shadow were also read by
production, so the two samples overlap there; the test treats them as independent, which only makes it
less ready to call a difference significant (the agreement figures show the paired view).
"""

from __future__ import annotations

from datetime import UTC, datetime
from math import comb, sqrt
from typing import Literal

from pydantic import BaseModel, Field
from sqlalchemy.orm import Session, sessionmaker

from care_companion.config import Settings
from care_companion.records.models import LATENCY_BUCKETS_MS, DriftCheck
from care_companion.records.repos import (
    list_audit,
    list_drift_checks,
    serving_totals,
    shadow_outcomes,
    shadow_pairs,
    version_outcomes,
)
from care_companion.registry.models import alias_version
from care_companion.tasks import get_task

Verdict = Literal["promote", "rollback", "wait", "no_canary"]
SERVED_ROLES = ("production", "canary")  # traffic that was answered to someone (not shadow scoring)
Z95 = 1.959964


class Rate(BaseModel):
    """A proportion with its counts and 95% Wilson interval (null without a denominator)."""

    hits: int
    total: int
    value: float | None
    low: float | None
    high: float | None


def wilson(hits: int, total: int, z: float = Z95) -> Rate:
    """``hits / total`` with its Wilson score interval (good at small counts and at 0 or 1)."""
    if total <= 0:
        return Rate(hits=hits, total=total, value=None, low=None, high=None)
    p = hits / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return Rate(hits=hits, total=total, value=p, low=max(0.0, centre - half), high=min(1.0, centre + half))


def fisher_less(a_hits: int, a_total: int, b_hits: int, b_total: int) -> float:
    """One-sided Fisher exact p-value that A's hit rate is below B's: P(A's hits <= a_hits) given the margins."""
    hits, total = a_hits + b_hits, a_total + b_total
    denominator = comb(total, hits)
    low = max(0, hits - b_total)
    return sum(comb(a_total, k) * comb(b_total, hits - k) for k in range(low, a_hits + 1)) / denominator


def histogram_percentile(counts: list[int], q: float) -> float | None:
    """The ``q`` (0-100) percentile of a latency histogram over :data:`LATENCY_BUCKETS_MS`, interpolated inside
    its bucket (the open last bucket reports its lower edge); None when empty."""
    total = sum(counts)
    if not total:
        return None
    needed = q / 100 * total
    edges = (0, *LATENCY_BUCKETS_MS)
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= needed:
            if i >= len(LATENCY_BUCKETS_MS):
                return float(edges[-1])
            low, high = edges[i], LATENCY_BUCKETS_MS[i]
            return round(low + (high - low) * (needed - seen) / n, 2)
        seen += n
    return float(edges[-1])


class VersionEvidence(BaseModel):
    """What one version did over the canary window."""

    version: int
    alias: str
    confirmed_studies: int = Field(description="Studies it answered (or shadowed) that a radiologist confirmed.")
    shadowed_studies: int = Field(description="Of those, studies it scored in shadow mode.")
    sensitivity: Rate = Field(description="Diseased studies it called positive / diseased studies.")
    specificity: Rate = Field(description="Healthy studies it called negative / healthy studies.")
    requests: int = Field(description="Requests it answered, refused or failed (every replica).")
    refused: int
    error_rate: Rate
    latency_ms_p95: float | None
    drift_checks: int
    drifted_checks: int
    latest_drift: bool | None = Field(description="The verdict of its latest drift check (null: none).")


class Agreement(BaseModel):
    """The canary against production on the same films (shadow mode)."""

    films: int
    same_label: Rate
    same_decision: Rate
    canary_refused: int = Field(description="Films production answered that the canary would have refused.")


class ReleaseReport(BaseModel):
    """``GET /v1/releases/{task}``: production and the canary over the canary window, and the rule's verdict."""

    task: str
    at: str
    since: str | None = Field(description="Start of the canary window (null: all time).")
    canary_percent: float
    mode: str
    production: VersionEvidence | None
    canary: VersionEvidence | None
    agreement: Agreement | None
    verdict: Verdict
    reasons: list[str] = Field(description="Why the verdict is what it is.")
    p_values: dict[str, float] = Field(default_factory=dict, description="The one-sided tests that were run.")


def canary_since(session: Session, task: str, version: int) -> datetime | None:
    """When ``version`` of ``task`` was last promoted to canary (an allowed ``release.promote`` audit row)."""
    rows, _ = list_audit(
        session=session, action="release.promote", resource_type="model", resource_id=f"{task}/{version}", limit=100
    )
    for row in rows:  # newest first
        if row.detail.get("to") == "canary" and row.detail.get("allowed"):
            return row.at
    return None


def version_evidence(
    session: Session,
    task: str,
    version: int,
    alias: str,
    since: datetime | None,
    checks: list[DriftCheck],
    *,
    shadow: bool,
) -> VersionEvidence:
    """One version's evidence since ``since`` (``checks``: the task's drift checks over the window; ``shadow``:
    count the studies it scored in shadow too)."""
    positives = {c.casefold() for c in get_task(task).positives}
    outcomes = version_outcomes(session=session, task=task, version=str(version), since=since)
    shadowed = shadow_outcomes(session=session, task=task, version=str(version), since=since) if shadow else []
    tp = fn = tn = fp = 0
    for called, truth in outcomes + shadowed:
        diseased = truth.casefold() in positives
        tp, fn = tp + (diseased and called), fn + (diseased and not called)
        tn, fp = tn + (not diseased and not called), fp + (not diseased and called)
    requests, errors, refused, latency = serving_totals(
        session=session, task=task, version=str(version), roles=SERVED_ROLES, since=since
    )
    checks = [c for c in checks if c.model_version == str(version)]
    return VersionEvidence(
        version=version,
        alias=alias,
        confirmed_studies=len(outcomes) + len(shadowed),
        shadowed_studies=len(shadowed),
        sensitivity=wilson(tp, tp + fn),
        specificity=wilson(tn, tn + fp),
        requests=requests,
        refused=refused,
        error_rate=wilson(errors, requests),
        latency_ms_p95=histogram_percentile(latency, 95),
        drift_checks=len(checks),
        drifted_checks=sum(bool(c.drifted) for c in checks),
        latest_drift=checks[-1].drifted if checks else None,
    )


def agreement(session: Session, task: str, version: int, since: datetime | None) -> Agreement | None:
    """How often the canary's shadow answers matched production's on the same films (None: nothing shadowed)."""
    pairs = shadow_pairs(session=session, task=task, version=str(version), since=since)
    if not pairs:
        return None
    refusal = get_task(task).refusal_code
    return Agreement(
        films=len(pairs),
        same_label=wilson(sum(a == c for a, _, c, _ in pairs), len(pairs)),
        same_decision=wilson(sum(b == d for _, b, _, d in pairs), len(pairs)),
        canary_refused=sum(c == refusal for _, _, c, _ in pairs),
    )


def judge(
    canary: VersionEvidence, production: VersionEvidence | None, settings: Settings
) -> tuple[Verdict, list[str], dict[str, float]]:
    """The decision rule (module docstring): the verdict, its reasons and the p-values of the tests run."""
    alpha, minimum = settings.release_alpha, settings.release_min_canary_studies
    worse: list[str] = []
    missing: list[str] = []
    p_values: dict[str, float] = {}
    if production is not None:
        for name, lower, higher, direction in (
            ("sensitivity", canary.sensitivity, production.sensitivity, "below"),
            ("error_rate", production.error_rate, canary.error_rate, "above"),
        ):
            if not (lower.total and higher.total):
                continue
            p_values[name] = fisher_less(lower.hits, lower.total, higher.hits, higher.total)  # canary worse?
            if p_values[name] < alpha:
                c, p = (lower, higher) if direction == "below" else (higher, lower)
                worse.append(
                    f"canary {name.replace('_', ' ')} {c.value:.4f} ({c.hits}/{c.total}) is significantly {direction} "
                    f"production's {p.value:.4f} ({p.hits}/{p.total}; one-sided Fisher exact p = "
                    f"{p_values[name]:.4f} < {alpha})"
                )
        if canary.requests >= minimum and production.requests >= minimum:
            cl, pl = canary.latency_ms_p95, production.latency_ms_p95
            limit = pl * (1 + settings.release_max_latency_increase) if pl is not None else None
            if cl is not None and limit is not None and cl > limit:
                worse.append(
                    f"canary p95 latency {cl:.1f} ms is above production's {pl:.1f} ms by more than "
                    f"{settings.release_max_latency_increase:.0%}"
                )
        else:
            missing.append(f"fewer than {minimum} requests of each model to compare latency")
    if worse:
        return "rollback", worse, p_values
    if canary.confirmed_studies < minimum:
        missing.append(f"{canary.confirmed_studies} confirmed canary studies, fewer than the {minimum} required")
    if not canary.sensitivity.total:
        missing.append("no confirmed diseased study among the canary's: its sensitivity is unknown")
    if missing:
        return "wait", missing, p_values
    reason = "enough confirmed canary studies"
    if production is not None:
        reason += ", and no sensitivity, error-rate or latency regression against production"
    return "promote", [reason], p_values


def release_report(task: str, settings: Settings, sessions: sessionmaker[Session]) -> ReleaseReport:
    """The canary report of ``task`` now (registry lookups and database reads: blocking)."""
    canary_version = alias_version(task, settings.canary_alias, settings)
    production_version = alias_version(task, "production", settings)
    if canary_version == production_version:
        canary_version = None
    production = canary = agreed = since = None
    with sessions() as session:
        if canary_version is not None:
            since = canary_since(session, task, canary_version)
        checks = list_drift_checks(session=session, task=task, since=since)
        if production_version is not None:
            production = version_evidence(session, task, production_version, "production", since, checks, shadow=False)
        if canary_version is not None:
            alias = settings.canary_alias
            canary = version_evidence(session, task, canary_version, alias, since, checks, shadow=True)
            agreed = agreement(session, task, canary_version, since)
    p_values: dict[str, float] = {}
    if canary is None:
        verdict: Verdict = "no_canary"
        reasons = [f"{task} has no {settings.canary_alias} version other than production's"]
    else:
        verdict, reasons, p_values = judge(canary, production, settings)
    return ReleaseReport(
        task=task,
        at=datetime.now(UTC).isoformat(timespec="seconds"),
        since=since.isoformat(timespec="seconds") if since else None,
        canary_percent=settings.canary_percent,
        mode=settings.canary_mode,
        production=production,
        canary=canary,
        agreement=agreed,
        verdict=verdict,
        reasons=reasons,
        p_values=p_values,
    )
