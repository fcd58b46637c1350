"""Promotion as a decision with evidence (``care-companion release promote``/``rollback``).

The order is enforced: a version goes to ``staging`` (registration already passed the recall gate), then to
``canary`` only from staging, then to ``production`` only from canary, and only when the canary's evidence
holds:

* at least ``CARE_RELEASE_MIN_CANARY_STUDIES`` studies it answered were confirmed or corrected by a
  radiologist, with at least one positive (diseased) among them;
* its sensitivity on those studies is **not significantly below production's** on production's confirmed
  studies: a one-sided Fisher exact test of H0 "the canary detects diseased studies at least as often as
  production" against H1 "less often", refused when p < ``CARE_RELEASE_ALPHA`` (0.05). Fisher's test is exact
  for the small counts a canary share gives, where a normal approximation is not trustworthy.

A move to production remembers the version it replaced, so ``rollback`` moves production back in one step.
Every move and refusal is an audit row (``release.promote``, ``release.rollback``) with its evidence.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from math import comb
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from care_companion.access.audit import audit
from care_companion.config import Settings
from care_companion.errors import ConfigError, RequestError
from care_companion.records.repos import version_outcomes
from care_companion.registry.models import (
    alias_version,
    note_previous_production,
    previous_production,
    set_alias,
)
from care_companion.tasks import get_task

ORDER = ("staging", "canary", "production")


class PromotionRefused(RequestError):
    """The move breaks the order or the evidence does not hold."""

    code = "promotion_refused"


@dataclass(frozen=True)
class Evidence:
    """What radiologists said of the studies one version answered."""

    version: int
    studies: int  # confirmed or corrected studies
    positives: int  # of those, truly diseased
    detected: int  # of the diseased, called positive by the version

    @property
    def sensitivity(self) -> float | None:
        """Detected / positives, or None without a positive study."""
        return self.detected / self.positives if self.positives else None


@dataclass
class Decision:
    """Whether a move may happen, why not, and the evidence behind it."""

    task: str
    version: int
    to: str
    reasons: list[str] = field(default_factory=list)  # why it is refused; empty: allowed
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def allowed(self) -> bool:
        """No reason to refuse it."""
        return not self.reasons


def evidence_for(session: Session, task: str, version: int) -> Evidence:
    """The verdicts on ``version``'s answers, as counts."""
    positives_of = set(get_task(task).positives)
    outcomes = version_outcomes(session=session, task=task, version=str(version))
    diseased = [positive for positive, truth in outcomes if truth in positives_of]
    return Evidence(version, len(outcomes), len(diseased), sum(diseased))


def fisher_less(a_hits: int, a_total: int, b_hits: int, b_total: int) -> float:
    """One-sided Fisher exact p-value that A's hit rate is below B's: P(A's hits <= a_hits) given the margins."""
    hits, total = a_hits + b_hits, a_total + b_total
    denominator = comb(total, hits)
    low = max(0, hits - b_total)
    return sum(comb(a_total, k) * comb(b_total, hits - k) for k in range(low, a_hits + 1)) / denominator


def canary_decision(
    decision: Decision, canary: Evidence, production: Evidence | None, *, min_studies: int, alpha: float
) -> Decision:
    """Fill ``decision`` (canary -> production) from the canary's and production's evidence."""
    decision.evidence["canary"] = asdict(canary) | {"sensitivity": canary.sensitivity}
    if production is not None:
        decision.evidence["production"] = asdict(production) | {"sensitivity": production.sensitivity}
    if canary.studies < min_studies:
        decision.reasons.append(f"{canary.studies} confirmed canary studies, fewer than the {min_studies} required")
    if canary.positives == 0:
        decision.reasons.append("no confirmed diseased study among the canary's: its sensitivity is unknown")
    if production is not None and production.positives and canary.positives:
        p = fisher_less(canary.detected, canary.positives, production.detected, production.positives)
        decision.evidence["p_value"] = p
        decision.evidence["test"] = "one-sided Fisher exact, canary sensitivity below production's"
        if p < alpha:
            decision.reasons.append(
                f"canary sensitivity {canary.sensitivity:.3f} ({canary.detected}/{canary.positives}) is "
                f"significantly below production's {production.sensitivity:.3f} "
                f"({production.detected}/{production.positives}; p = {p:.4f} < {alpha})"
            )
    return decision


def decide(task: str, version: int, to: str, settings: Settings, sessions: sessionmaker[Session]) -> Decision:
    """Whether ``version`` of ``task`` may move to alias ``to`` now, with the evidence.

    Raises:
        ConfigError: ``to`` is not staging, canary or production.
    """
    if to not in ORDER:
        raise ConfigError(f"invalid alias {to!r}; use one of: {', '.join(ORDER)}")
    decision = Decision(task, version, to)
    if to == "staging":
        return decision
    before = ORDER[ORDER.index(to) - 1]
    at = alias_version(task, before, settings)
    if at != version:
        decision.reasons.append(
            f"version {version} is not at {before} ({task}@{before} is {at if at is not None else 'unset'}): "
            f"the order is {' -> '.join(ORDER)}"
        )
        return decision
    if to == "production":
        current = alias_version(task, "production", settings)
        with sessions() as session:
            canary = evidence_for(session, task, version)
            production = evidence_for(session, task, current) if current is not None else None
        canary_decision(
            decision,
            canary,
            production,
            min_studies=settings.release_min_canary_studies,
            alpha=settings.release_alpha,
        )
    return decision


def promote(task: str, version: int, to: str, settings: Settings, sessions: sessionmaker[Session]) -> Decision:
    """Move ``version`` of ``task`` to ``to`` when :func:`decide` allows it; audited either way.

    Raises:
        PromotionRefused: the order or the evidence says no (the decision is in the message and the audit row).
    """
    decision = decide(task, version, to, settings, sessions)
    if decision.allowed:
        if to == "production":
            current = alias_version(task, "production", settings)
            if current is not None and current != version:
                note_previous_production(task, current, settings)
        set_alias(task, version, to, settings)
    _audit(sessions, "release.promote", decision)
    if not decision.allowed:
        raise PromotionRefused(f"{task} version {version} -> {to} refused: {'; '.join(decision.reasons)}")
    return decision


def rollback(task: str, settings: Settings, sessions: sessionmaker[Session]) -> Decision:
    """Move production back to the version it pointed at before its last promotion, in one step; audited.

    Raises:
        PromotionRefused: no earlier production version is known.
    """
    previous = previous_production(task, settings)
    current = alias_version(task, "production", settings)
    decision = Decision(task, previous or 0, "production", evidence={"from": current})
    if previous is None:
        decision.reasons.append(f"no earlier production version of {task} is known")
    else:
        set_alias(task, previous, "production", settings)
        if current is not None:
            note_previous_production(task, current, settings)
    _audit(sessions, "release.rollback", decision)
    if not decision.allowed:
        raise PromotionRefused(f"{task} rollback refused: {'; '.join(decision.reasons)}")
    return decision


def _audit(sessions: sessionmaker[Session], action: str, decision: Decision) -> None:
    with sessions() as session, session.begin():
        audit(
            session,
            None,
            action,
            "model",
            f"{decision.task}/{decision.version}",
            to=decision.to,
            allowed=decision.allowed,
            reasons=decision.reasons,
            evidence=decision.evidence,
        )
