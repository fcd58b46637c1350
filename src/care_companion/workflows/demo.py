"""The demo: synthetic chest X-rays and wrist studies → import → small models trained for a few minutes → gate →
registry.

Everything it produces is labelled a demo model: it has seen only generated images and is not for
clinical use.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from care_companion.config import Settings
from care_companion.data.chest import import_chest
from care_companion.data.importer import ImportResult
from care_companion.data.rejects import NO_REJECTS, RejectSources
from care_companion.data.synthetic_chest import write_synthetic_chest_tree
from care_companion.data.synthetic_wrist import synthetic_wrist_studies, synthetic_wrist_study, write_wrist_studies
from care_companion.data.wrist import import_wrist
from care_companion.imaging.decode import DecodeLimits
from care_companion.storage import store_from_settings
from care_companion.tasks import CHEST, WRIST
from care_companion.training.trainer import TrainConfig
from care_companion.workflows.accounts import Credentials, open_account
from care_companion.workflows.training import TrainOutcome, train_task

DEMO_ADMIN = "admin"  # the demo's admin user; its password is reset on every run and printed
# the demo's clinicians (one department), their passwords reset on every run and printed too
DEMO_CLINICIANS = (("technician", "technician"), ("radiologist", "radiologist"))
DEMO_DEPARTMENT = "radiology"

# a small ResNet (timm's test_resnet, 0.37 M parameters) at 96 px, from scratch; output stride 8 (dilated last
# stages) gives 12 x 12 heat maps: at stride 32 (3 x 3) the map's peak fell in the lesion of 5 of 100 synthetic
# positive films, at 8 (with the log-odds map and measured cell centres) 55 and within 15 px 93 (docs/guide/serving.md)
DEMO_CHEST_RECIPE = TrainConfig(
    backbone="test_resnet",
    output_stride=8,
    image_size=96,
    batch_size=32,
    head_epochs=0,
    finetune_epochs=20,
    finetune_lr=2e-3,
    patience=5,
    samples_per_epoch=None,
)
# thin fracture lines need more pixels than chest films; the small ResNet learns them late (its best epoch was
# 17-19 of 20 in runs here, and one stopped early at chance before it had started), so no early stopping
# (stride 32: its heat maps are 4 x 4, coarse, but training fits the demo's minutes)
DEMO_WRIST_RECIPE = DEMO_CHEST_RECIPE.model_copy(update={"image_size": 128, "patience": 20, "output_stride": 32})

# side of the generated chest films; at 160 px generating was 3x faster, but that one run's model missed TB
# films and was refused by the gate
DEMO_CHEST_SIZE = 256
DEMO_WRIST_SIZE = 128  # side of the generated wrist films
DEMO_TARGET_SENSITIVITY = 0.99  # the demo's operating point: a margin over the gate's 0.95 on a small test split
DEMO_OTHER_TASK_FILMS = 150  # at most this many wrist demo films join the chest 'unknown' class on a re-run
DEMO_WORKERS = 2  # processes generating the synthetic films (the same bytes with any number)
DEMO_WRIST_SEVERITY = 0.85  # fractures from clear to obvious: subtle ones need far more than minutes of CPU


def demo_settings(settings: Settings) -> Settings:
    """The settings the demo trains with: its operating point aims at sensitivity 0.99 on validation.

    With the operating point at the gate's own 0.95, test sensitivity on the demo's ~20 test films per disease
    class lands on either side of 0.95 by chance (one run of this demo was refused at 0.90); aiming higher
    trades specificity for a pass that does not depend on the draw.
    """
    target = max(settings.target_sensitivity, DEMO_TARGET_SENSITIVITY)
    return settings.model_copy(update={"target_sensitivity": target})


def run_demo(
    settings: Settings, *, per_class: int = 200, non_xray: int = 100, config: TrainConfig | None = None
) -> tuple[ImportResult, TrainOutcome]:
    """Generate, import and train on a synthetic chest data set; returns the import and training results."""
    source = Path(settings.data_dir) / "demo-source" / f"synthetic-chest-{per_class}-{DEMO_CHEST_SIZE}px"
    if not (source / "normal").is_dir():
        write_synthetic_chest_tree(
            source, per_class, seed=settings.seed, size=DEMO_CHEST_SIZE, include_unknown=False, workers=DEMO_WORKERS
        )
    imported = import_chest(
        [source],
        store_from_settings(settings),
        seed=settings.seed,
        rejects=RejectSources(non_xray=non_xray, other_tasks_max=DEMO_OTHER_TASK_FILMS),
        limits=DecodeLimits.from_settings(settings),
    )
    recipe = (config or DEMO_CHEST_RECIPE).model_copy(update={"seed": settings.seed})
    outcome = train_task(CHEST, recipe, settings=demo_settings(settings), dataset_version=imported.version, demo=True)
    return imported, outcome


def run_wrist_demo(
    settings: Settings,
    *,
    studies: int = 1500,
    rejects: RejectSources = NO_REJECTS,
    config: TrainConfig | None = None,
) -> tuple[ImportResult, TrainOutcome]:
    """Generate synthetic two-view wrist studies in the GRAZPEDWRI-DX layout, import them and train the two-view
    demo model on them; returns the import and training results.

    The demo's wrist set has no reject-class images by default (``rejects``): with 100 generated non-X-rays and
    150 chest demo films in 'unknown', the demo recipe did not learn the synthetic fractures in its budget (test
    AUC 0.52 with ResNet-18 at 128 px, 12 epochs; 0.58 against 0.85 without them for a smaller ResNet), so the
    demo wrist model refuses other images through its out-of-distribution gate alone.
    """
    source = Path(settings.data_dir) / "demo-source" / f"synthetic-wrist-{studies}-severity-{DEMO_WRIST_SEVERITY}"
    if not (source / "dataset.csv").is_file():
        generated = synthetic_wrist_studies(
            studies,
            seed=settings.seed,
            size=DEMO_WRIST_SIZE,
            fracture_rate=0.4,
            min_severity=DEMO_WRIST_SEVERITY,
            workers=DEMO_WORKERS,
        )
        write_wrist_studies(generated, source, seed=settings.seed)
    imported = import_wrist(
        source,
        store_from_settings(settings),
        seed=settings.seed,
        rejects=rejects,
        limits=DecodeLimits.from_settings(settings),
    )
    recipe = (config or DEMO_WRIST_RECIPE).model_copy(update={"seed": settings.seed})
    outcome = train_task(WRIST, recipe, settings=demo_settings(settings), dataset_version=imported.version, demo=True)
    return imported, outcome


def write_examples(settings: Settings) -> dict[str, Path]:
    """Example uploads for trying the demo service: one synthetic chest film per class, a photograph and the PA
    and lateral films of a fractured synthetic wrist (``wrist_pa``, ``wrist_lateral``)."""
    from PIL import Image

    from care_companion.data.synthetic_chest import natural_images, synth_chest

    folder = Path(settings.data_dir) / "demo-source" / "examples"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(settings.seed + 1)
    images = {label: synth_chest(label, rng, 256) for label in ("normal", "pneumonia", "tuberculosis")}
    images["photo"] = natural_images(rng, 1, 256)[0]
    study = synthetic_wrist_study(rng, fractured=True, size=DEMO_WRIST_SIZE, min_severity=DEMO_WRIST_SEVERITY)
    images |= {f"wrist_{view}": pixels for view, pixels in study.views.items()}
    paths = {}
    for name, pixels in images.items():
        paths[name] = folder / f"{name}.png"
        Image.fromarray(pixels).save(paths[name])
    return paths


DEMO_POLL_SECONDS = 3.0  # how often the demo's service looks for a newly registered model (the wrist one)


def start_service(settings: Settings, *, log_level: str = "warning") -> subprocess.Popen[bytes]:
    """Start ``care-companion serve`` on the demo's settings in a child process that follows the registry every
    few seconds, so a model registered while it runs (the wrist model) joins without a restart."""
    env = os.environ | {
        "CARE_DATA_DIR": str(Path(settings.data_dir).resolve()),
        "CARE_HOST": settings.host,
        "CARE_PORT": str(settings.port),
        "CARE_MODEL_POLL_SECONDS": str(DEMO_POLL_SECONDS),
    }
    command = [sys.executable, "-m", "care_companion", "serve", "--log-level", log_level]
    return subprocess.Popen(command, env=env)


def wait_until_served(
    settings: Settings, task: str, *, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> bool:
    """Wait until the service at ``settings.host:port`` serves ``task`` (its ``/ready`` lists it); False when
    ``timeout`` seconds pass or the service process exits first."""
    url = f"http://{settings.host}:{settings.port}/ready"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        try:
            if task in httpx.get(url, timeout=2.0).json().get("models", {}):
                return True
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    return False


def demo_accounts(settings: Settings) -> list[Credentials]:
    """The demo's admin (with an API key) and its technician and radiologist, created or given new passwords
    (the records database must be migrated)."""
    admin = open_account(settings, username=DEMO_ADMIN, role="admin", api_key=True, reset=True)
    clinicians = [
        open_account(settings, username=name, role=role, department=DEMO_DEPARTMENT, reset=True)
        for name, role in DEMO_CLINICIANS
    ]
    return [admin, *clinicians]
