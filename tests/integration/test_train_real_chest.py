"""A tiny model trained for a few steps on real chest X-rays: beats chance, gated, exported, evaluated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from care_companion.config import Settings
from care_companion.data.chest import import_chest
from care_companion.data.manifest import load_manifest
from care_companion.data.rejects import RejectSources
from care_companion.data.synthetic_chest import natural_images
from care_companion.errors import ModelError
from care_companion.models.bundle import load_meta
from care_companion.registry.models import list_versions
from care_companion.serving.app import create_app
from care_companion.storage import store_from_settings
from care_companion.tasks import CHEST
from care_companion.training.trainer import TrainConfig
from care_companion.workflows.evaluation import evaluate_model
from care_companion.workflows.training import train_task
from tests.conftest import shared_path
from tests.helpers import migrated, sign_in

pytestmark = [pytest.mark.slow, pytest.mark.integration]

TINY = TrainConfig(
    backbone="resnet18",
    image_size=64,
    batch_size=32,
    finetune_epochs=4,
    finetune_lr=3e-3,
    patience=4,
    samples_per_epoch=None,
)


@pytest.fixture(scope="module")
def real_chest(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, str]:
    cxr = shared_path("cxr-real")
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("real") / "care-data", seed=3, gate_min_sensitivity=0.0, gate_min_auc=0.6
    )
    result = import_chest(
        [cxr],
        store_from_settings(settings),
        seed=3,
        rejects=RejectSources(non_xray=60, folders=(shared_path("fracatlas", "images"),), folders_max=80),
        workers=2,
    )
    assert result.counts["cxr-real"] == {"normal": 262, "pneumonia": 196, "tuberculosis": 189}
    assert result.counts["non-chest:images"] == {"unknown": 80}
    return settings, result.version


def test_tiny_model_beats_chance_registers_and_exports(real_chest):
    settings, version = real_chest
    outcome = train_task(CHEST, TINY, settings=settings, dataset_version=version)
    m = outcome.metrics
    assert m["auc_abnormal"] > 0.75, m  # chance is 0.5
    assert m["unknown_sensitivity"] > 0.8, m  # photos and screenshots are rejected
    assert outcome.gate.passed and outcome.registered_version == 1
    versions = list_versions("chest", settings)
    assert [v.version for v in versions] == [1] and versions[0].aliases == ["staging"]
    assert versions[0].metrics["auc_abnormal"] == pytest.approx(m["auc_abnormal"])

    bundle = outcome.bundle_dir
    meta = load_meta(bundle)
    assert meta.dataset_version == version and meta.input_size == 64 and meta.classes == CHEST.classes
    assert set(meta.thresholds) == {"abnormal", "pneumonia", "tuberculosis"} and meta.temperature > 0
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {"image": np.zeros((3, 1, 64, 64), np.float32)})[0]
    assert out.shape == (3, 4)
    for plot in ("roc.png", "confusion.png", "reliability.png"):
        assert (bundle / "plots" / plot).stat().st_size > 1000
    report = json.loads((bundle / "evaluation.json").read_text())
    assert report["by_group"]["source"].keys() >= {"cxr-real", "generated-non-xray"}

    assert meta.int8 is not None and (bundle / "model.int8.onnx").is_file()
    assert set(meta.int8.test) == {"fp32", "int8"}

    # the registered model evaluates on any class-folder tree through its registry URI
    run = evaluate_model("models:/chest@staging", shared_path("cxr-real"), settings=settings, n_boot=50)
    assert run.report.n == 647 and run.report.auc_abnormal is not None and run.report.auc_abnormal > 0.75


def test_gate_refuses_a_model_short_of_the_recall_floor(real_chest):
    settings, version = real_chest
    strict = settings.model_copy(update={"gate_min_sensitivity": 1.01})
    outcome = train_task(
        CHEST, TINY.model_copy(update={"finetune_epochs": 1}), settings=strict, dataset_version=version
    )
    assert not outcome.gate.passed and outcome.registered_version is None
    assert any("pneumonia sensitivity" in s for s in outcome.gate.shortfalls)
    assert any("tuberculosis sensitivity" in s for s in outcome.gate.shortfalls)
    assert Path(outcome.bundle_dir, "model.onnx").is_file()  # a refused run still leaves its bundle
    from care_companion.registry.tracking import tracking_client

    run = tracking_client(strict).get_run(outcome.run_id)
    assert run.data.tags["needs_retraining"] == "true" and run.data.tags["gate"] == "refused"


def _upload(client: TestClient, path: Path) -> tuple[int, dict]:
    response = client.post("/v1/predict/chest", files={"file": (path.name, path.read_bytes(), "image/jpeg")})
    return response.status_code, response.json()


def test_served_model_answers_chest_films_and_refuses_other_images(real_chest, tmp_path: Path):
    """The trained model behind the service: chest films get findings, other body parts and photos get 422."""
    settings, version = real_chest
    if not list_versions_safe(settings):
        train_task(CHEST, TINY, settings=settings, dataset_version=version)
    frame = load_manifest(store_from_settings(settings), "chest", version).frame
    imported = {Path(p).name for p in frame["path"]}
    hands = [p for p in sorted(shared_path("fracatlas", "images").rglob("*.jpg")) if p.name not in imported][:10]
    photo = tmp_path / "photo.png"
    Image.fromarray(natural_images(np.random.default_rng(99), 1, 300)[0]).save(photo)
    films = sorted(shared_path("cxr-real").rglob("*.jpg"))[::80]
    with TestClient(create_app(migrated(settings.model_copy(update={"model_poll_seconds": 0})))) as client:
        sign_in(client)
        answers = [_upload(client, film) for film in films]
        assert all(code == 200 for code, _ in answers), answers
        for _, body in answers:
            assert body["review_required"] is True and body["model"]["alias"] == "staging"
            assert body["label"] in {"normal", "pneumonia", "tuberculosis"}
        refused = [_upload(client, hand) for hand in hands]
        assert sum(code == 422 for code, _ in refused) >= 8, refused  # other body parts: no finding
        assert all(body["error"] == "not_a_chest_xray" for code, body in refused if code == 422)
        code, body = _upload(client, photo)
        assert code == 422 and body["error"] == "not_a_chest_xray", body


def list_versions_safe(settings: Settings) -> list:
    try:
        return list_versions("chest", settings)
    except ModelError:
        return []
