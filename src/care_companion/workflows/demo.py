"""The demo: synthetic chest X-rays → import → a small model trained for a few minutes → gate → registry.

Everything it produces is labelled a demo model: it has seen only generated images and is not for
clinical use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from care_companion.config import Settings
from care_companion.data.chest import import_chest
from care_companion.data.importer import ImportResult
from care_companion.data.synthetic import write_synthetic_chest_tree
from care_companion.storage import store_from_settings
from care_companion.tasks import CHEST
from care_companion.training.trainer import TrainConfig
from care_companion.workflows.training import TrainOutcome, train_task

DEMO_ADMIN = "admin"  # the demo's admin user; its password is reset on every run and printed

DEMO_RECIPE = TrainConfig(
    backbone="resnet18",
    image_size=128,
    batch_size=32,
    head_epochs=0,
    finetune_epochs=12,
    finetune_lr=2e-3,
    patience=5,
    samples_per_epoch=None,
)


def run_demo(
    settings: Settings, *, per_class: int = 200, non_xray: int = 100, config: TrainConfig | None = None
) -> tuple[ImportResult, TrainOutcome]:
    """Generate, import and train on a synthetic chest data set; returns the import and training results."""
    source = Path(settings.data_dir) / "demo-source" / "synthetic-chest"
    if not (source / "normal").is_dir():
        write_synthetic_chest_tree(source, per_class, seed=settings.seed, include_unknown=False)
    imported = import_chest(
        [source],
        store_from_settings(settings),
        seed=settings.seed,
        non_xray=non_xray,
        min_side=settings.min_image_side,
        max_pixels=settings.max_image_pixels,
    )
    recipe = (config or DEMO_RECIPE).model_copy(update={"seed": settings.seed})
    outcome = train_task(CHEST, recipe, settings=settings, dataset_version=imported.version, demo=True)
    return imported, outcome


def write_examples(settings: Settings) -> dict[str, Path]:
    """Example uploads for trying the demo service: one synthetic film per class and a photograph."""
    from PIL import Image

    from care_companion.data.synthetic import natural_images, synth_chest

    folder = Path(settings.data_dir) / "demo-source" / "examples"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(settings.seed + 1)
    images = {label: synth_chest(label, rng, 256) for label in ("normal", "pneumonia", "tuberculosis")}
    images["photo"] = natural_images(rng, 1, 256)[0]
    paths = {}
    for name, pixels in images.items():
        paths[name] = folder / f"{name}.png"
        Image.fromarray(pixels).save(paths[name])
    return paths
