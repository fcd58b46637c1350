"""INT8 quantisation of a bundle: the model file, the recorded comparison, and which file is served."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from care_companion.data.datasets import ArrayData
from care_companion.data.synthetic_chest import synth_chest
from care_companion.errors import ModelError
from care_companion.models.bundle import INT8_FILE, ONNX_FILE, load_meta, save_meta
from care_companion.models.predictor import BundlePredictor, model_file
from care_companion.tasks import CHEST
from care_companion.workflows.quantization import add_int8
from tests.conftest import write_bundle


def _data(n: int, seed: int) -> ArrayData:
    rng = np.random.default_rng(seed)
    labels = np.array([i % 3 for i in range(n)], dtype=np.int64)
    images = np.stack([synth_chest(CHEST.classes[label], rng, 64) for label in labels])
    return ArrayData(images=images, labels=labels)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    train = _data(24, 4)
    fit = ([{"frontal": image} for image in train.images], [int(label) for label in train.labels])
    bundle = write_bundle(tmp_path_factory.mktemp("int8") / "bundle", fit=fit)
    add_int8(bundle, _data(24, 1), _data(18, 2), CHEST, max_calibration=16)
    return bundle


def test_int8_model_is_written_and_compared(quantized: Path) -> None:
    meta = load_meta(quantized)
    assert (quantized / INT8_FILE).is_file()
    assert (quantized / INT8_FILE).stat().st_size < (quantized / ONNX_FILE).stat().st_size / 2
    assert meta.int8 is not None and meta.int8.calibration_images == 16
    for split in (meta.int8.validation, meta.int8.test):
        assert set(split) == {"fp32", "int8"}
        assert "sensitivity_abnormal" in split["int8"] and "auc_abnormal" in split["int8"]
    drops = [
        k
        for split in (meta.int8.validation, meta.int8.test)
        for k, v in split["fp32"].items()
        if "sensitivity" in k and split["int8"][k] < v
    ]
    assert meta.int8.preferred == (not drops)
    assert set(meta.int8.thresholds) == {"abnormal", "pneumonia", "tuberculosis"} and meta.int8.temperature > 0


def test_int8_logits_track_fp32_and_use_their_own_operating_point(quantized: Path) -> None:
    images = list(_data(12, 3).images)
    fp32 = BundlePredictor(quantized, precision="fp32")
    int8 = BundlePredictor(quantized, precision="int8")
    assert int8.precision == "int8" and fp32.precision == "fp32"
    reference = fp32.logits(fp32.preprocess(images))
    spread = float(reference.max() - reference.min()) or 1.0
    assert np.abs(int8.logits(int8.preprocess(images)) - reference).max() < 0.1 * spread
    meta = load_meta(quantized)
    assert meta.int8 is not None
    assert int8.thresholds == meta.int8.thresholds and int8.temperature == meta.int8.temperature
    assert fp32.thresholds == meta.thresholds and fp32.temperature == meta.temperature


def test_auto_precision_follows_the_verdict(quantized: Path, tmp_path: Path) -> None:
    meta = load_meta(quantized)
    assert meta.int8 is not None
    meta.int8.preferred = True
    assert model_file(quantized, meta, "auto").name == INT8_FILE
    meta.int8.preferred = False
    assert model_file(quantized, meta, "auto").name == ONNX_FILE
    assert model_file(quantized, meta, "int8").name == INT8_FILE
    plain = write_bundle(tmp_path / "plain")
    plain_meta = load_meta(plain)
    assert model_file(plain, plain_meta, "auto").name == ONNX_FILE
    with pytest.raises(ModelError, match="no INT8 model"):
        model_file(plain, plain_meta, "int8")
    with pytest.raises(ModelError, match="unknown precision"):
        model_file(plain, plain_meta, "fp16")
    save_meta(plain, plain_meta)
