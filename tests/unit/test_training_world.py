"""The trainer's world: a run interrupted after an epoch continues from its checkpoint; studies of several
views (some missing) train through the same two-stage trainer and export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from care_companion.data.datasets import ArrayData, model_inputs
from care_companion.models.export import export_onnx
from care_companion.tasks import CHEST, WRIST
from care_companion.training.trainer import TrainConfig, train_classifier
from care_companion.training.world import STATE_FILE, LocalWorld, load_state
from tests.unit.test_trainer import _toy

TINY = {
    "backbone": "test_resnet",
    "image_size": 32,
    "batch_size": 16,
    "head_epochs": 0,
    "finetune_lr": 3e-3,
    "patience": 10,
    "samples_per_epoch": None,
    "seed": 0,
    "augment": False,
}


class Interrupt(Exception):
    pass


def test_an_interrupted_run_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    config = TrainConfig(**TINY, finetune_epochs=3)
    train, val = _toy(96, 0), _toy(32, 1)
    epochs_seen: list[int] = []

    def stop_after_two(metrics: dict[str, Any]) -> None:
        epochs_seen.append(metrics["epoch"])
        if metrics["epoch"] == 2:
            raise Interrupt  # before epoch 2's checkpoint: the resumed run must redo epoch 2

    with pytest.raises(Interrupt):
        train_classifier(train, val, CHEST, config, on_epoch=stop_after_two, world=LocalWorld(tmp_path))
    saved = load_state(tmp_path)
    assert saved is not None and (tmp_path / STATE_FILE).is_file()
    assert (saved.stage_index, saved.epoch, saved.stage_done, len(saved.history)) == (0, 1, False, 1)

    resumed: list[int] = []
    _, result = train_classifier(
        train, val, CHEST, config, on_epoch=lambda m: resumed.append(m["epoch"]), world=LocalWorld(tmp_path)
    )
    assert resumed == [2, 3], "the resumed run did not start at the first unfinished epoch"
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.history[0] == saved.history[0]
    assert result.train_images == 3 * 96
    final = load_state(tmp_path)
    assert final is not None and final.stage_done and final.epoch == 3

    again: list[int] = []
    train_classifier(train, val, CHEST, config, on_epoch=lambda m: again.append(m["epoch"]), world=LocalWorld(tmp_path))
    assert again == [], "a finished run trained again instead of returning its best model"


def _studies(n: int, seed: int) -> ArrayData:
    """Wrist-like studies: a fracture is a bright bar in one view; some studies lack the other view."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    images = rng.integers(0, 60, (2 * n, 32, 32)).astype(np.uint8)
    views = np.arange(2 * n).reshape(n, 2)
    for i, y in enumerate(labels):
        shown = rng.integers(0, 2)
        if y:
            images[views[i, shown], 12:20, 4:28] = 230
        if rng.random() < 0.3:
            views[i, 1 - shown] = -1  # one-view study (the fracture's view is kept)
    return ArrayData(images=images, labels=labels, views=views, view_names=("pa", "lateral"))


def test_studies_train_through_the_same_trainer_and_export(tmp_path: Path) -> None:
    train, val = _studies(160, 0), _studies(48, 1)
    assert (train.views_used() == 1).any() and (train.views_used() == 2).any()
    inputs = model_inputs(train, np.arange(4), mean=0.5, std=0.25)
    assert inputs[0].shape == (4, 2, 1, 32, 32) and inputs[1].shape == (4, 2)
    missing = train.views[:4] < 0
    assert bool((inputs[0][missing] == 0).all()) and bool((inputs[1][missing] == 0).all())

    model, result = train_classifier(train, val, WRIST, TrainConfig(**TINY, finetune_epochs=4))
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.best["score"] > 0.6
    assert export_onnx(model, tmp_path / "wrist.onnx", input_size=32) <= 1e-4
