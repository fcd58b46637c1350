"""A tiny model trained for a few steps on real chest X-rays: beats chance, gated, exported, evaluated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from care_companion.config import Settings
from care_companion.data.chest import import_chest
from care_companion.models.bundle import load_meta
from care_companion.registry.models import list_versions
from care_companion.storage import store_from_settings
from care_companion.tasks import CHEST
from care_companion.training.trainer import TrainConfig
from care_companion.workflows.evaluation import evaluate_model
from care_companion.workflows.training import train_task
from tests.conftest import shared_path

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
    result = import_chest([cxr], store_from_settings(settings), seed=3, non_xray=60, workers=2)
    assert result.counts["cxr-real"] == {"normal": 262, "pneumonia": 196, "tuberculosis": 189}
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
