"""Acceptance test of the task registry: a third task defined outside the package (tests/plugins/toy_task.py)
is imported, trained, registered, served through POST /v1/predict/{task}, stored with a study and feedback,
and shown by the monitoring API, with no file of the package edited for it."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from care_companion.config import Settings
from care_companion.data.manifest import load_manifest
from care_companion.records.db import make_engine, session_factory
from care_companion.records.models import TaskRow
from care_companion.registry.models import CANARY_SPLIT_DETAIL_TAG, CANARY_SPLIT_TAG, version_tags
from care_companion.serving.app import create_app
from care_companion.storage import store_from_settings
from care_companion.tasks import TASKS, register_task, unregister_task
from care_companion.training.trainer import TrainConfig
from care_companion.workflows.training import CANARY_EVALUATION_FILE, train_task
from tests.conftest import REPO
from tests.helpers import migrated, sign_in
from tests.plugins.ankle import ANKLE, ankle_film, write_ankle_tree

pytestmark = [pytest.mark.slow, pytest.mark.integration]

RADIOLOGIST = ("rad", "radiologist", "radiology")


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def ankle_registered() -> Iterator[None]:
    """The toy task, registered for this module's tests only (other modules see the built-in tasks)."""
    register_task(ANKLE)
    yield
    unregister_task(ANKLE.name)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, ankle_registered: None) -> Settings:
    root = tmp_path_factory.mktemp("toy")
    # The gate is real but milder: with 15 test films per class one miss is 0.93 sensitivity, and this test is
    # about the task registry's plumbing, not the toy model's quality.
    settings = Settings(
        data_dir=root / "care-data", seed=5, model_poll_seconds=0, drift_min_images=5, gate_min_sensitivity=0.85
    )
    source = write_ankle_tree(root / "ankle-films", per_class=150, seed=1)
    importer = ANKLE.importer()
    imported = importer([source], store_from_settings(settings), task=ANKLE, seed=settings.seed)
    assert imported.n_images == 300
    config = TrainConfig(**ANKLE.recipe.model_dump(), seed=settings.seed)
    outcome = train_task(ANKLE, config, settings=settings, dataset_version=imported.version, demo=True, int8=False)
    assert outcome.gate.passed, outcome.gate.shortfalls
    assert outcome.registered_version is not None
    tags = version_tags("ankle", outcome.registered_version, settings)  # the release's staging -> canary evidence
    canary_items = len(load_manifest(store_from_settings(settings), "ankle", None).split("canary"))
    assert tags[CANARY_SPLIT_TAG] in (("passed", "refused") if canary_items else ("absent",))
    assert tags[CANARY_SPLIT_DETAIL_TAG]
    assert (outcome.bundle_dir / CANARY_EVALUATION_FILE).exists() == bool(canary_items)
    assert load_manifest(store_from_settings(settings), "ankle", None).version == imported.version
    return migrated(settings)


def test_a_task_registered_outside_the_package_runs_end_to_end(trained: Settings) -> None:
    assert "ankle" in TASKS
    with TestClient(create_app(trained)) as client:
        tasks = {t["name"]: t for t in client.get("/v1/tasks").json()}
        assert tasks["ankle"]["upload_fields"] == ["file"] and tasks["ankle"]["refusal_code"] == (
            "not_a_ankle_radiograph"
        )
        models = client.get("/v1/models").json()
        assert [m["task"] for m in models["data"]] == ["ankle"]

        sign_in(client)
        patient = client.post("/v1/patients", json={"mrn": "TOY-1", "name": "Toy Patient"}).json()
        study = client.post("/v1/studies", json={"patient_id": patient["id"], "task": "ankle"})
        assert study.status_code == 201, study.text
        assert study.json()["body_part"] == "ankle"
        rng = np.random.default_rng(99)
        film = _png(ankle_film(True, rng))
        answer = client.post(
            "/v1/predict/ankle", files={"file": ("ankle.png", film, "image/png")}, data={"study_id": study.json()["id"]}
        )
        assert answer.status_code == 200, answer.text
        result = answer.json()
        assert result["task"] == "ankle" and set(result["probabilities"]) == {"normal", "effusion"}
        assert result["study_id"] == study.json()["id"] and result["image_id"] is not None
        assert result["review_required"] is True
        images = client.get(f"/v1/studies/{study.json()['id']}/images").json()
        assert [image["view"] for image in images] == ["ap"]
        for _ in range(6):  # enough inputs for the monitor to see the task
            pixels = ankle_film(bool(rng.integers(2)), rng)
            assert (
                client.post("/v1/predict/ankle", files={"file": ("a.png", _png(pixels), "image/png")}).status_code
                == 200
            )

        sign_in(client, RADIOLOGIST)
        verdict = client.post(f"/v1/studies/{study.json()['id']}/feedback", json={"true_label": "effusion"})
        assert verdict.status_code == 201, verdict.text
        assert verdict.json()["predicted_label"] == result["label"]

        health = client.get("/v1/monitoring/health")
        assert health.status_code == 200, health.text
        ankle = health.json()["tasks"]["ankle"]
        assert sum(ankle["predictions"].values()) >= 7 and ankle["model"]["loaded"] is True
        drift = client.get("/v1/monitoring/drift")
        assert "ankle" in drift.json()["tasks"]
        metrics = client.get("/metrics").text
        assert 'task="ankle"' in metrics and 'endpoint="/v1/predict/ankle"' in metrics

        unknown = client.post("/v1/predict/knee", files={"file": ("a.png", film, "image/png")})
        assert unknown.status_code == 404 and "ankle" in unknown.json()["detail"]

    engine = make_engine(trained.db_url)
    try:
        with session_factory(engine)() as session:
            row = session.get(TaskRow, "ankle")
            assert row is not None and row.views == ["ap"] and row.body_part == "ankle"
    finally:
        engine.dispose()


def test_the_cli_sees_a_plugin_task_named_in_the_settings(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARE_", "MLFLOW_"))}
    env |= {"CARE_TASK_MODULES": '["tests.plugins.toy_task"]', "CARE_DATA_DIR": str(tmp_path / "d"), "COLUMNS": "200"}
    env["PYTHONPATH"] = str(REPO)  # the plug-in module lives in the repository's tests package
    cli = [str(Path(sys.executable).parent / "care-companion")]
    listed = subprocess.run([*cli, "tasks"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert "ankle" in listed.stdout and "effusion" in listed.stdout
    source = write_ankle_tree(tmp_path / "films", per_class=8)
    imported = subprocess.run(
        [*cli, "data", "import", "folders", "ankle", str(source)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert imported.returncode == 0, imported.stderr
    assert "ankle data set" in imported.stdout
    env.pop("CARE_TASK_MODULES")
    unknown = subprocess.run([*cli, "tasks"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert "ankle" not in unknown.stdout
