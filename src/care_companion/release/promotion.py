"""Promotion as a decision with evidence (``care-companion release promote``/``rollback``).

The order is enforced: a version goes to ``staging`` (registration already passed the recall gate), then to
``canary`` only from staging and only when the same gate passed on the data set's 1% canary split (evaluated at
training, kept as the version's ``care.canary_split`` tag), then to ``production`` only from canary, and only when
the canary report's rule
(:mod:`care_companion.release.report`) says promote: enough radiologist-confirmed canary studies, at least one
diseased, and no significant regression of sensitivity, error rate or latency against production.

A move to production remembers the version it replaced, so ``rollback`` moves production back in one step.
:func:`auto` applies the rule (for a schedule): it promotes a canary the rule promotes and ends one it rolls back.
Every move and refusal is an audit row (``release.promote``, ``release.rollback``) with its evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from care_companion.access.audit import audit
from care_companion.config import Settings
from care_companion.errors import ConfigError, RequestError
from care_companion.registry.models import (
    CANARY_SPLIT_DETAIL_TAG,
    CANARY_SPLIT_TAG,
    alias_version,
    delete_alias,
    note_previous_production,
    previous_production,
    set_alias,
    version_tags,
)
from care_companion.release.report import ReleaseReport, release_report

ORDER = ("staging", "canary", "production")
EVIDENCE_FIELDS = {"since", "production", "canary", "agreement", "verdict", "p_values"}


class PromotionRefused(RequestError):
    """The move breaks the order or the evidence does not hold."""

    code = "promotion_refused"


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


def _evidence(report: ReleaseReport) -> dict[str, Any]:
    return report.model_dump(mode="json", include=EVIDENCE_FIELDS) | {"rule": report.reasons}


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
    if to == "canary":
        tags = version_tags(task, version, settings)
        result = tags.get(CANARY_SPLIT_TAG)
        decision.evidence["canary_split"] = {"gate": result, "detail": tags.get(CANARY_SPLIT_DETAIL_TAG)}
        if result != "passed":
            why = {
                "refused": f"its offline evaluation on the data set's canary split failed the gate: "
                f"{tags.get(CANARY_SPLIT_DETAIL_TAG, '')}",
                "absent": "its data set had no canary split to evaluate it on",
            }.get(result or "", "it has no offline evaluation on the canary split (registered before the check)")
            decision.reasons.append(f"version {version} may not serve real patients: {why}")
    if to == "production":
        report = release_report(task, settings, sessions)
        decision.evidence = _evidence(report)
        if report.verdict != "promote":
            decision.reasons.extend(report.reasons)
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


def auto(task: str, settings: Settings, sessions: sessionmaker[Session]) -> tuple[ReleaseReport, Decision | None]:
    """Apply the canary report's rule once: promote the canary to production when it says promote, end the canary
    (remove its alias; production keeps serving everyone) when it says rollback, else nothing; audited when it
    moves. Returns the report and the move made, if any."""
    report = release_report(task, settings, sessions)
    if report.canary is None or report.verdict in ("wait", "no_canary"):
        return report, None
    if report.verdict == "promote":
        return report, promote(task, report.canary.version, "production", settings, sessions)
    ended = _evidence(report) | {"ended": True}
    decision = Decision(task, report.canary.version, settings.canary_alias, evidence=ended)
    delete_alias(task, settings.canary_alias, settings)
    _audit(sessions, "release.rollback", decision)
    return report, decision


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
