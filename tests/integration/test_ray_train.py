"""Data-parallel training on a local Ray instance with 2 workers: the same trainer, MLflow logging from rank 0
only, and a run that fails mid-way continues from its last checkpoint when started again under its name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from care_companion.config import Settings
from care_companion.errors import ModelError
from care_companion.registry.tracking import start_run, tracking_client
from care_companion.tasks import WRIST
from care_companion.training.distributed import train_on_ray
from care_companion.training.trainer import TrainConfig
from tests.unit.test_training_world import TINY, _studies

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = TrainConfig(**TINY, finetune_epochs=3)


class EpochTwoFails:
    """An epoch callback that fails the run at epoch 2, as a crash would (it pickles into the worker)."""

    def __call__(self, metrics: dict[str, Any]) -> None:
        if metrics["epoch"] == 2:
            raise RuntimeError("simulated crash in epoch 2")


def test_two_workers_train_log_from_rank_zero_and_resume(tmp_path: Path, settings: Settings) -> None:
    train, val = _studies(160, 0), _studies(48, 1)
    storage = tmp_path / "ray"
    with pytest.raises(ModelError, match="simulated crash"):
        train_on_ray(
            train,
            val,
            WRIST,
            CONFIG,
            workers=2,
            storage=storage,
            name="crash",
            on_epoch=EpochTwoFails(),
            max_failures=0,
        )
    with start_run(settings, "wrist", "ray-test") as run:

        def log(metrics: dict[str, Any]) -> None:
            run.log_metrics({"val_loss": metrics["val_loss"]}, step=int(metrics["step"]))

        model, result = train_on_ray(train, val, WRIST, CONFIG, workers=2, storage=storage, name="crash", on_epoch=log)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    # the resumed run trained epochs 2 and 3 only, so only they reached MLflow, each once (rank 0 alone logs)
    logged = tracking_client(settings).get_metric_history(run.run_id, "val_loss")
    assert sorted(m.step for m in logged) == [2, 3]
    assert result.train_images == 3 * len(train)  # each epoch's draw was shared out, not repeated per worker
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert not model.training


def test_the_chest_trainer_runs_through_the_same_path(tmp_path: Path) -> None:
    from care_companion.tasks import CHEST
    from tests.unit.test_trainer import _toy

    config = TrainConfig(**(TINY | {"finetune_epochs": 2}))
    model, result = train_on_ray(_toy(96, 0), _toy(32, 1), CHEST, config, workers=1, storage=tmp_path, name="chest")
    assert [h["epoch"] for h in result.history] == [1, 2] and result.train_images == 2 * 96
    assert model.input_names == ("image",)
