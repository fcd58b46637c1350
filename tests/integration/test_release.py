"""Promotion as a decision with evidence, on a real embedded MLflow registry and records database: the order
staging -> canary -> production is enforced; canary -> production needs enough radiologist-confirmed canary
studies and a sensitivity not significantly below production's (one-sided Fisher exact test); a better canary is
promoted, a worse one refused, rollback moves production back in one step; every move is audited."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from care_companion.config import Settings
from care_companion.records.db import make_engine, session_factory
from care_companion.records.repos import (
    add_feedback,
    add_prediction,
    create_patient,
    create_study,
    get_user_by_username,
    list_audit,
)
from care_companion.records.schemas import FeedbackCreate, PatientCreate, PredictionCreate, StudyCreate
from care_companion.registry.models import alias_version, register_bundle
from care_companion.registry.tracking import start_run
from care_companion.release.promotion import PromotionRefused, fisher_less, promote, rollback
from tests.conftest import write_bundle
from tests.helpers import migrated, seed_users

pytestmark = pytest.mark.integration


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
                register_bundle(bundle, task="chest", run_id=run.run_id, settings=settings)
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
    with pytest.raises(PromotionRefused, match="fewer than the 20 required"):
        move(world, 2, "production")
    confirm(world, 2, diseased=12, detected=12, healthy=10)
    decision = move(world, 2, "production")
    assert decision.evidence["canary"]["sensitivity"] == 1.0 and decision.evidence["p_value"] == 1.0
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
