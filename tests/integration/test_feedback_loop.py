"""The feedback loop: labelled feedback images → a new data-set version → retraining through the gate."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from care_companion.cli.main import app
from care_companion.config import Settings, get_settings
from care_companion.data.chest import import_chest
from care_companion.data.manifest import load_manifest
from care_companion.data.rejects import RejectSources
from care_companion.data.synthetic_chest import synth_chest, write_synthetic_chest_tree
from care_companion.records.db import make_engine, session_factory, upgrade
from care_companion.records.repos import add_feedback, create_patient, create_study, create_user
from care_companion.records.schemas import FeedbackCreate, PatientCreate, StudyCreate, UserCreate
from care_companion.storage import store_from_settings
from care_companion.tasks import CHEST
from care_companion.workflows.retraining import build_feedback_dataset, count_new_labels

pytestmark = pytest.mark.integration


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _give_feedback(settings: Settings, verdicts: list[tuple[int, bytes, str]]) -> list[str]:
    """Store each image under feedback/chest/<LABEL>/ and record a verdict for patient ``p``; returns the keys."""
    store = store_from_settings(settings)
    engine = make_engine(settings.db_url)
    keys = []
    try:
        with session_factory(engine)() as session, session.begin():
            rad = create_user(
                session=session,
                user_in=UserCreate(
                    username=f"rad{len(verdicts)}-{np.random.randint(1e9)}", full_name="r", role="radiologist"
                ),
                password_hash=None,
            )
            for patient_no, data, label in verdicts:
                patient = create_patient(
                    session=session,
                    patient_in=PatientCreate(mrn=f"M{patient_no}-{np.random.randint(1e9)}", name="x", department="er"),
                )
                study = create_study(session=session, study_in=StudyCreate(patient_id=patient.id, task="chest"))
                key = f"feedback/chest/{label.upper()}/{hashlib.sha256(data).hexdigest()}.png"
                store.put_bytes(key, data)
                add_feedback(
                    session=session,
                    study_id=study.id,
                    radiologist_id=rad.id,
                    feedback_in=FeedbackCreate(true_label=label),
                    object_key=key,
                )
                keys.append(key)
    finally:
        engine.dispose()
    return keys


@pytest.fixture
def loop(cli_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("CARE_GATE_MIN_SENSITIVITY", "0")
    monkeypatch.setenv("CARE_GATE_MIN_AUC", "0")
    get_settings.cache_clear()
    settings = get_settings()
    src = tmp_path / "synthetic"
    write_synthetic_chest_tree(src, 12, seed=3, size=96, include_unknown=False)
    imported = import_chest([src], store_from_settings(settings), seed=3, rejects=RejectSources(non_xray=10), workers=1)
    upgrade(settings.db_url)
    return {"settings": settings, "base": imported.version}


def test_build_dataset_adds_labelled_feedback_once(loop: dict[str, Any]) -> None:
    settings, base = loop["settings"], loop["base"]
    store = store_from_settings(settings)
    rng = np.random.default_rng(11)
    existing = load_manifest(store, "chest", base).frame.iloc[0]
    duplicate = store.get_bytes(existing["key"])  # the same pixels as an image already in the data set
    fresh = [_png(synth_chest("pneumonia", rng, 128)), _png(synth_chest("tuberculosis", rng, 128))]
    keys = _give_feedback(
        settings, [(1, fresh[0], "pneumonia"), (2, fresh[1], "tuberculosis"), (3, duplicate, "normal")]
    )
    assert count_new_labels(CHEST, settings) == 3

    built = build_feedback_dataset(CHEST, settings)
    assert built.base_version == base and built.version != base
    assert built.added == 2 and built.duplicates == 1 and built.counts == {"pneumonia": 1, "tuberculosis": 1}
    after = load_manifest(store, "chest").frame
    assert load_manifest(store, "chest").version == built.version  # the new version is the latest
    rows = after[after["source"] == "feedback"]
    assert set(rows["path"]) == set(keys[:2]) and set(rows["patient_id"]) <= {f"records:{i}" for i in range(1, 10)}
    assert rows["split"].isin(["train", "val", "test", "canary", "production"]).all()
    before = load_manifest(store, "chest", base).frame
    assert after[after["source"] != "feedback"]["split"].tolist() == before["split"].tolist()  # old rows keep splits
    assert count_new_labels(CHEST, settings) == 1  # only the duplicate is outside the data set

    # a later verdict on an image already added changes its label, not its split
    split = rows.loc[rows["path"] == keys[0], "split"].item()
    _give_feedback(settings, [(4, fresh[0], "normal")])
    assert count_new_labels(CHEST, settings) == 1
    again = build_feedback_dataset(CHEST, settings)
    assert again.added == 0 and again.duplicates == 1
    latest = load_manifest(store, "chest").frame
    row = latest[latest["path"] == keys[0]]
    assert row["label"].tolist() == ["normal"] and row["split"].tolist() == [split]
    assert len(latest) == len(after)


def _drift_check(settings: Any, *, drifted: bool, hours_ago: float) -> None:
    """A drift check row as the service writes it."""
    from datetime import UTC, datetime, timedelta

    from care_companion.records.models import DriftCheck
    from care_companion.records.repos import add_drift_check

    engine = make_engine(settings.db_url)
    with session_factory(engine).begin() as session:
        at = datetime.now(UTC) - timedelta(hours=hours_ago)
        check = DriftCheck(task="chest", at=at, window_inputs=50, window_images=45, drifted=drifted, p_values={})
        add_drift_check(session=session, check=check)
    engine.dispose()


@pytest.mark.slow
def test_retrain_policy_and_run(loop: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Enough new labels retrain; a recent drift alarm lowers how many are enough; an old one does not."""
    runner = CliRunner()
    rng = np.random.default_rng(5)
    _give_feedback(loop["settings"], [(i, _png(synth_chest("pneumonia", rng, 96)), "pneumonia") for i in range(3)])
    monkeypatch.setenv("CARE_RETRAIN_MIN_FEEDBACK_ON_DRIFT", "3")
    get_settings.cache_clear()
    waiting = runner.invoke(app, ["retrain", "--if-needed", "--min-new", "10"])
    assert waiting.exit_code == 0 and "not needed: 3 new labels (policy: at least 10; no drift alarm" in waiting.output
    _drift_check(loop["settings"], drifted=True, hours_ago=30)  # older than CARE_RETRAIN_DRIFT_HOURS (24)
    _drift_check(loop["settings"], drifted=False, hours_ago=1)
    still = runner.invoke(app, ["retrain", "--if-needed", "--min-new", "10"])
    assert "not needed: 3 new labels (policy: at least 10" in still.output
    _drift_check(loop["settings"], drifted=True, hours_ago=2)
    tiny = ["--backbone", "test_resnet", "--image-size", "32", "--finetune-epochs", "1", "--samples-per-epoch", "64"]
    done = runner.invoke(app, ["retrain", "--if-needed", "--min-new", "10", *tiny])
    assert done.exit_code == 0, done.output
    assert "retraining: 3 new labels (policy: at least 3; drift alarm at" in done.output
    assert "registered chest version 1" in done.output
    assert runner.invoke(app, ["retrain", "--if-needed", "--min-new", "1"]).output.startswith("retraining not needed")
