"""A toy third task, defined outside the package: a one-view, binary 'ankle' task on synthetic films.

The definition and its films live here; importing :mod:`tests.plugins.toy_task` registers it (as
``CARE_TASK_MODULES=["tests.plugins.toy_task"]`` does in a service or CLI process). The images are simple on
purpose: two bright bone shafts on noise; an 'effusion' film has a soft bright blob between them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from care_companion.tasks import Recipe, ServingSpec, TaskSpec

ANKLE = TaskSpec(
    name="ankle",
    title="Ankle radiograph (toy)",
    classes=["normal", "effusion"],
    negative="normal",
    positives=["effusion"],
    views=["ap"],
    body_part="ankle",
    dicom_body_parts=["ANKLE"],
    importers={"folders": "care_companion.data.generic:import_folders"},
    recipe=Recipe(image_size=64, batch_size=32, head_epochs=0, finetune_epochs=6, samples_per_epoch=None),
    serving=ServingSpec(upload_help="An AP ankle radiograph: PNG, JPEG or DICOM."),
)


def ankle_film(effusion: bool, rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """A synthetic ankle film (uint8): two vertical bone shafts, noise, and for effusion a bright blob."""
    y, x = np.mgrid[0:size, 0:size] / size
    image = 40 + 20 * rng.random() + rng.normal(0, 6, (size, size))
    for centre in (0.35 + rng.normal(0, 0.02), 0.65 + rng.normal(0, 0.02)):
        image += 120 * np.exp(-(((x - centre) / 0.06) ** 2))
    if effusion:
        cy, cx = 0.5 + rng.normal(0, 0.08), 0.5 + rng.normal(0, 0.03)
        image += 160 * np.exp(-(((x - cx) ** 2 + (y - cy) ** 2) / 0.015))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_ankle_tree(root: Path, per_class: int, seed: int = 0) -> Path:
    """Class folders normal/ and effusion/ of synthetic ankle films under ``root``; returns ``root``."""
    rng = np.random.default_rng(seed)
    for label in ANKLE.classes:
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(ankle_film(label == "effusion", rng)).save(folder / f"{label}-{i:04d}.png")
    return root
