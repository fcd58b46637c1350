"""Promotion as a decision with evidence, on a real embedded MLflow registry and records database: the order
staging -> canary -> production is enforced; canary -> production needs enough radiologist-confirmed canary
studies and a sensitivity not significantly below production's (one-sided Fisher exact test); a better canary is
promoted, a worse one refused, rollback moves production back in one step; every move is audited."""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from care_companion.config import Settings
from care_companion.records.db import make_engine, session_factory
from care_companion.records.models import LATENCY_BUCKETS_MS, ServingStat
from care_companion.records.repos import (
    add_feedback,
    add_prediction,
    add_serving_stats,
    create_patient,
    create_study,
    get_user_by_username,
    list_audit,
)
from care_companion.records.schemas import FeedbackCreate, PatientCreate, PredictionCreate, StudyCreate
from care_companion.registry.models import CANARY_SPLIT_DETAIL_TAG, CANARY_SPLIT_TAG, alias_version, register_bundle
from care_companion.registry.tracking import start_run
from care_companion.release.promotion import PromotionRefused, promote, rollback
from care_companion.release.report import fisher_less
from tests.conftest import write_bundle
from tests.helpers import migrated, seed_users

pytestmark = pytest.mark.integration

CANARY_PASSED = {CANARY_SPLIT_TAG: "passed"}  # as training tags a version that passed the gate on the canary split


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Three registered chest versions (each at staging when registered) and an empty records database."""
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith(("CARE_", "MLFLOW_"))]:
            mp.delenv(name)
        settings = migrated(Settings(data_dir=tmp_path / "care-data", release_min_canary_studies=20))
        for i in range(3):
            bundle = write_bundle(tmp_path / f"b{i}")
            with start_run(settings, "chest", f"v{i}", {"task": "chest"}) as run:
                register_bundle(bundle, task="chest", run_id=run.run_id, settings=settings, tags=CANARY_PASSED)
        engine = make_engine(settings.db_url)
        sessions = session_factory(engine)
        with sessions() as session, session.begin():
            seed_users(session, (("rad", "radiologist", "er"),))
        try:
            yield {"settings": settings, "sessions": sessions, "mrn": iter(range(10**6))}
        finally:
            engine.dispose()


def confirm(world: dict[str, Any], version: int, *, diseased: int, detected: int, healthy: int) -> None:
    """Radiologists' verdicts on studies ``version`` answered: ``diseased`` pneumonia studies of which it called
    ``detected`` positive, and ``healthy`` normal studies it called negative."""
    cases = [("pneumonia", i < detected) for i in range(diseased)] + [("normal", False)] * healthy
    with world["sessions"]() as session, session.begin():
        rad = get_user_by_username(session=session, username="rad")
        assert rad is not None
        for truth, positive in cases:
            mrn = f"R-{next(world['mrn'])}"
            patient = create_patient(session=session, patient_in=PatientCreate(mrn=mrn, name=mrn, department="er"))
            study = create_study(session=session, study_in=StudyCreate(patient_id=patient.id, task="chest"))
            label = "pneumonia" if positive else "normal"
            prediction = add_prediction(
                session=session,
                prediction_in=PredictionCreate(
                    study_id=study.id,
                    request_id="r",
                    task="chest",
                    model_name="chest",
                    model_version=str(version),
                    probabilities={label: 0.9},
                    label=label,
                    threshold=0.5,
                    positive=positive,
                    confidence="high",
                    latency_ms=1.0,
                ),
            )
            add_feedback(
                session=session,
                study_id=study.id,
                radiologist_id=rad.id,
                feedback_in=FeedbackCreate(true_label=truth),
                prediction_id=prediction.id,
            )
        serve(session, version, requests=len(cases), errors=0, latency_ms=40)


def serve(session: Any, version: int, *, requests: int, errors: int, latency_ms: float, role: str = "canary") -> None:
    """One replica's traffic counts for ``version``: ``requests`` of which ``errors`` failed, the rest answered in
    about ``latency_ms``."""
    counts = [0] * (len(LATENCY_BUCKETS_MS) + 1)
    counts[bisect.bisect_left(LATENCY_BUCKETS_MS, latency_ms)] = requests - errors
    add_serving_stats(
        session=session,
        rows=[
            ServingStat(
                task="chest",
                model_version=str(version),
                role=role,
                replica="test",
                requests=requests,
                errors=errors,
                refused=0,
                latency_counts=counts,
            )
        ],
    )


def move(world: dict[str, Any], version: int, to: str) -> Any:
    return promote("chest", version, to, world["settings"], world["sessions"])


def test_the_order_is_enforced_and_a_better_canary_is_promoted_then_rolled_back(world: dict[str, Any]) -> None:
    settings = world["settings"]
    move(world, 1, "staging")
    move(world, 1, "canary")
    confirm(world, 1, diseased=10, detected=10, healthy=10)
    move(world, 1, "production")  # the first production version: no production to compare with
    assert alias_version("chest", "production", settings) == 1
    with pytest.raises(PromotionRefused, match="is not at canary"):
        move(world, 3, "production")  # straight from staging
    with pytest.raises(PromotionRefused, match="is not at staging"):
        move(world, 2, "canary")  # version 3, registered last, is at staging
    move(world, 2, "staging")
    move(world, 2, "canary")
    confirm(world, 1, diseased=10, detected=10, healthy=10)  # production answers everyone else meanwhile
    with pytest.raises(PromotionRefused, match="fewer than the 20 required"):
        move(world, 2, "production")
    confirm(world, 2, diseased=12, detected=12, healthy=10)
    decision = move(world, 2, "production")
    assert decision.evidence["canary"]["sensitivity"]["value"] == 1.0
    assert decision.evidence["p_values"]["sensitivity"] == 1.0
    assert alias_version("chest", "production", settings) == 2
    back = rollback("chest", settings, world["sessions"])
    assert back.version == 1 and alias_version("chest", "production", settings) == 1
    with world["sessions"]() as session:
        rows, _ = list_audit(session=session, action="release.promote")
        rolled, _ = list_audit(session=session, action="release.rollback")
    assert len(rows) == 9 and sum(not r.detail["allowed"] for r in rows) == 3 and len(rolled) == 1


def test_a_canary_that_misses_disease_is_refused(world: dict[str, Any]) -> None:
    move(world, 1, "staging")
    move(world, 1, "canary")
    confirm(world, 1, diseased=20, detected=19, healthy=10)
    move(world, 1, "production")
    move(world, 2, "staging")
    move(world, 2, "canary")
    confirm(world, 1, diseased=20, detected=19, healthy=10)
    confirm(world, 2, diseased=20, detected=12, healthy=10)  # 0.60 against production's 0.95
    with pytest.raises(PromotionRefused, match="significantly below production"):
        move(world, 2, "production")
    assert alias_version("chest", "production", world["settings"]) == 1


def test_the_one_sided_fisher_test() -> None:
    assert fisher_less(12, 20, 19, 20) < 0.01  # clearly worse
    assert fisher_less(19, 20, 12, 20) > 0.99  # clearly better
    assert fisher_less(10, 10, 10, 10) == 1.0
    # a textbook value: 1 of 5 against 5 of 5, P(X <= 1) = (C(5,1) C(5,5)) / C(10,6) + 0 = 5/210
    assert fisher_less(1, 5, 5, 5) == pytest.approx(5 / 210)


def test_the_cli_moves_and_refuses_with_a_clear_message(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from care_companion.cli.main import app
    from care_companion.config import get_settings

    monkeypatch.setenv("CARE_DATA_DIR", str(world["settings"].data_dir))
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        moved = runner.invoke(app, ["release", "promote", "--task", "chest", "--version", "3", "--to", "canary"])
        assert moved.exit_code == 0 and "chest@canary -> version 3" in moved.output, moved.output
        refused = runner.invoke(app, ["release", "promote", "--task", "chest", "--version", "3", "--to", "production"])
        assert refused.exit_code == 2 and "promotion_refused" in refused.output and "fewer than" in refused.output
        nothing = runner.invoke(app, ["release", "rollback", "--task", "chest"])
        assert nothing.exit_code == 2 and "no earlier production version" in nothing.output
    finally:
        get_settings.cache_clear()


def test_auto_promotes_a_better_canary_and_ends_a_worse_one_in_a_feedback_stream(world: dict[str, Any]) -> None:
    """Verdicts arrive a few studies at a time, and ``auto`` runs after each batch as a schedule would: it waits
    while the evidence is thin, promotes a canary as good as production once enough studies are confirmed, and
    ends (un-aliases) a canary that misses disease as soon as the difference is significant."""
    from care_companion.release.promotion import auto

    settings, sessions = world["settings"], world["sessions"]
    move(world, 1, "staging")
    move(world, 1, "canary")
    confirm(world, 1, diseased=10, detected=10, healthy=10)
    move(world, 1, "production")
    move(world, 2, "staging")
    move(world, 2, "canary")
    verdicts = []
    for _ in range(10):
        confirm(world, 1, diseased=6, detected=5, healthy=6)  # production: 5 of 6 diseased caught
        confirm(world, 2, diseased=3, detected=3, healthy=3)  # the canary: every one
        report, moved = auto("chest", settings, sessions)
        verdicts.append(report.verdict)
        if moved is not None:
            break
    assert verdicts[0] == "wait" and verdicts[-1] == "promote" and len(verdicts) == 4  # 4 x 6 = 24 >= 20 studies
    assert alias_version("chest", "production", settings) == 2
    move(world, 3, "staging")
    move(world, 3, "canary")
    verdicts = []
    for _ in range(10):
        confirm(world, 2, diseased=6, detected=6, healthy=6)
        confirm(world, 3, diseased=3, detected=1, healthy=3)  # misses two in three
        report, moved = auto("chest", settings, sessions)
        verdicts.append(report.verdict)
        if moved is not None:
            break
    assert verdicts[-1] == "rollback" and len(verdicts) < 5, verdicts
    assert report.p_values["sensitivity"] < settings.release_alpha
    assert alias_version("chest", "canary", settings) is None  # ended
    assert alias_version("chest", "production", settings) == 2  # production untouched
    with sessions() as session:
        ended, _ = list_audit(session=session, action="release.rollback")
    assert ended[0].detail["evidence"]["ended"] is True and ended[0].resource_id == "chest/3"


def test_release_status_prints_the_report(world: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from care_companion.cli.main import app
    from care_companion.config import get_settings

    move(world, 1, "staging")
    move(world, 1, "canary")
    confirm(world, 1, diseased=3, detected=2, healthy=3)
    monkeypatch.setenv("CARE_DATA_DIR", str(world["settings"].data_dir))
    monkeypatch.setenv("CARE_RELEASE_MIN_CANARY_STUDIES", "20")
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        shown = runner.invoke(app, ["release", "status", "--task", "chest"])
        assert shown.exit_code == 0, shown.output
        assert "canary (version 1)" in shown.output and "0.667 (2/3" in shown.output and "verdict: wait" in shown.output
        as_json = runner.invoke(app, ["release", "status", "--task", "chest", "--json"])
        assert '"verdict": "wait"' in as_json.output
        waited = runner.invoke(app, ["release", "promote", "--task", "chest", "--auto"])
        assert waited.exit_code == 0 and "verdict wait: nothing moved" in waited.output, waited.output
    finally:
        get_settings.cache_clear()


def test_only_a_version_that_passed_on_the_canary_split_reaches_canary(world: dict[str, Any], tmp_path: Path) -> None:
    """Training tags each version with the registry gate on the data set's 1% canary split; a version that failed
    it, or has no such evaluation, may be staged but never serve patients as the canary."""
    settings = world["settings"]
    refused = {CANARY_SPLIT_TAG: "refused", CANARY_SPLIT_DETAIL_TAG: "tuberculosis sensitivity 0.50 < required 0.95"}
    for number, tags in ((4, refused), (5, None)):
        bundle = write_bundle(tmp_path / f"c{number}")
        with start_run(settings, "chest", f"v{number}", {"task": "chest"}) as run:
            assert register_bundle(bundle, task="chest", run_id=run.run_id, settings=settings, tags=tags) == number
    move(world, 4, "staging")
    with pytest.raises(PromotionRefused, match=r"failed the gate: tuberculosis sensitivity 0\.50"):
        move(world, 4, "canary")
    move(world, 5, "staging")
    with pytest.raises(PromotionRefused, match="no offline evaluation on the canary split"):
        move(world, 5, "canary")
    assert alias_version("chest", "canary", settings) is None
    move(world, 1, "staging")
    assert move(world, 1, "canary").evidence["canary_split"]["gate"] == "passed"
