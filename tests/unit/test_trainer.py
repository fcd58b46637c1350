from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from care_companion.data.datasets import ArrayData, Augment
from care_companion.errors import ConfigError, ModelError
from care_companion.models.export import export_onnx
from care_companion.models.factory import create_classifier, load_init_weights
from care_companion.tasks import CHEST
from care_companion.training.trainer import TrainConfig, class_weights, sampling_weights, train_classifier


def _toy(n: int, seed: int) -> ArrayData:
    """Four classes told apart by where a bright blob sits: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    images = rng.integers(0, 60, (n, 32, 32)).astype(np.uint8)
    for i, y in enumerate(labels):
        r, c = divmod(int(y), 2)
        images[i, r * 16 + 4 : r * 16 + 12, c * 16 + 4 : c * 16 + 12] = 230
    return ArrayData(images=images, labels=labels)


def test_training_lowers_the_loss_and_keeps_the_best_model():
    config = TrainConfig(
        backbone="test_resnet",
        image_size=32,
        batch_size=32,
        head_epochs=1,
        finetune_epochs=4,
        finetune_lr=3e-3,
        patience=10,
        samples_per_epoch=None,
        seed=0,
        augment=False,
    )
    _, result = train_classifier(_toy(256, 0), _toy(64, 1), CHEST, config)
    history = result.history
    assert [h["stage"] for h in history] == ["finetune"] * 4  # random init: no frozen-backbone stage
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert result.best["score"] == max(h["val_recall"] for h in history)
    assert result.best["score"] > 0.5
    assert result.images_per_second > 0 and result.train_images == 4 * 256


def test_head_stage_runs_with_initial_weights(tmp_path: Path):
    model, _ = create_classifier("test_resnet", 4)
    torch.save(model.state_dict(), tmp_path / "init.pt")
    config = TrainConfig(
        backbone="test_resnet",
        image_size=32,
        batch_size=32,
        head_epochs=1,
        finetune_epochs=1,
        init_weights=tmp_path / "init.pt",
        seed=0,
        max_steps_per_epoch=2,
    )
    _, result = train_classifier(_toy(64, 0), _toy(32, 1), CHEST, config)
    assert [h["stage"] for h in result.history] == ["head", "finetune"]
    assert result.init.startswith("local checkpoint")


def test_init_weights_adapt_three_channel_backbones(tmp_path: Path):
    import timm

    rgb = timm.create_model("test_resnet", num_classes=0, in_chans=3)
    torch.save(rgb.state_dict(), tmp_path / "rgb.pt")
    model, _ = create_classifier("test_resnet", 4)
    load_init_weights(model, tmp_path / "rgb.pt")
    first = next(k for k, v in rgb.state_dict().items() if v.ndim == 4)
    assert torch.allclose(model.backbone.state_dict()[first], rgb.state_dict()[first].sum(1, keepdim=True))
    with pytest.raises(ModelError):
        load_init_weights(model, tmp_path / "missing.pt")


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown backbone"):
        create_classifier("resnet_does_not_exist", 4)


def test_class_weights_balance_counts():
    w = class_weights(np.array([0, 0, 0, 1]), 3)
    assert w[0] * 3 == pytest.approx(w[1] * 1) and w[2] == 0


def test_augment_keeps_shape_and_range():
    images = np.random.default_rng(0).integers(0, 255, (8, 32, 32), dtype=np.uint8)
    out = Augment()(images, torch.Generator().manual_seed(0))
    assert out.shape == (8, 1, 32, 32) and float(out.min()) >= 0 and float(out.max()) <= 1


def test_onnx_export_matches_pytorch(tmp_path: Path):
    model, _ = create_classifier("test_resnet", 4)
    diff = export_onnx(model, tmp_path / "m.onnx", input_size=32)
    assert diff <= 1e-4 and (tmp_path / "m.onnx").stat().st_size > 0

    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "embedding", "class_maps"]
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    logits, embedding, maps = session.run(None, {"image": x.numpy()})
    assert maps.shape[:2] == (3, 4)  # a map per class
    with torch.inference_mode():
        np.testing.assert_allclose(embedding, model.features(x).numpy(), atol=1e-4)
        np.testing.assert_allclose(logits, model(x).numpy(), atol=1e-4)


def test_sampling_balances_sources_within_each_class():
    labels = np.array([0] * 90 + [0] * 10 + [1] * 50)
    sources = np.array(["big"] * 90 + ["small"] * 10 + ["only"] * 50)
    w = sampling_weights(labels, sources)
    assert w is not None and w.sum() == pytest.approx(1.0)
    assert w[:90].sum() == pytest.approx(w[90:100].sum())  # the two sources of class 0 are drawn alike
    assert w[:100].sum() == pytest.approx(100 / 150)  # class shares are kept
    assert sampling_weights(labels, np.array(["one"] * 150)) is None


def test_pretrained_falls_back_to_scratch_when_weights_are_unreachable(monkeypatch, caplog):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-care-hf-cache")
    # huggingface_hub reads HF_HUB_OFFLINE once, at import: set its constant too, or the hub is tried over the
    # network until the connection times out (about 45 s here) before the same fallback
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with caplog.at_level("WARNING"):
        model, origin = create_classifier("resnet18", 4, pretrained=True)
    assert origin.startswith("random initialisation")
    assert "training from scratch" in caplog.text
    assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 4)


def test_progress_ticker_logs_after_earlier_bars_are_removed(caplog: pytest.LogCaptureFixture) -> None:
    """Without a terminal the ticker logs progress; task ids stay valid after earlier epochs' bars are removed."""
    import logging

    from rich.console import Console
    from rich.progress import Progress

    from care_companion.training.trainer import _Ticker

    bar = Progress(console=Console(file=open(os.devnull, "w"), force_terminal=False))  # noqa: SIM115
    first = bar.add_task("epoch 1", total=3)
    bar.remove_task(first)
    job = bar.add_task("epoch 2", total=4)
    ticker = _Ticker(bar, job, log_every=0.0)
    with caplog.at_level(logging.INFO, logger="care_companion.training.trainer"):
        ticker()
        ticker()
    assert "epoch 2: step 2/4" in caplog.text
