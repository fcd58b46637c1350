"""What the browser tests share: Debian's Chromium, the CLI, a chest bundle that really refuses photographs, and
a real ``care-companion serve`` with a migrated database and a technician and a radiologist."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import add_profile, write_bundle
from tests.processes import free_port, running, service_env, tail

CHROMIUM = Path("/usr/bin/chromium")
CLI = Path(sys.executable).with_name("care-companion")
PASSWORD = "correct-horse-battery-staple"


def playwright_or_skip() -> Any:
    """Playwright's sync API, or a skip saying what is missing (checked before the slow set-up)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium chromium-driver)")
    return pytest.importorskip(
        "playwright.sync_api", reason="the playwright package is not installed (pip install 'playwright>=1.45')"
    )


def photo_rejecting_chest_bundle(directory: Path) -> Path:
    """A chest bundle whose "unknown" output is a linear probe on the random backbone's embedding, fitted to
    tell synthetic films from photographs (the seeds make it deterministic), with its drift profile."""
    import torch
    from sklearn.linear_model import LogisticRegression

    from care_companion.data.synthetic_chest import natural_images, synth_chest
    from care_companion.models.bundle import ONNX_FILE
    from care_companion.models.export import export_onnx
    from care_companion.models.factory import create_model
    from care_companion.models.predictor import BundlePredictor
    from care_companion.tasks import CHEST

    write_bundle(directory)  # random weights, torch seed 0
    rng = np.random.default_rng(100)
    films = [synth_chest(("normal", "pneumonia", "tuberculosis")[i % 3], rng, (96, 256)[i % 2]) for i in range(60)]
    photos = natural_images(rng, 40, 256)
    predictor = BundlePredictor(directory)
    _, film_embeddings = predictor.logits_and_embeddings(predictor.preprocess(films))
    _, photo_embeddings = predictor.logits_and_embeddings(predictor.preprocess(photos))
    x = np.vstack([film_embeddings, photo_embeddings])
    y = np.r_[np.zeros(len(films)), np.ones(len(photos))]
    mean, scale = x.mean(0), x.std(0) + 1e-6
    probe = LogisticRegression(C=1.0, max_iter=5000).fit((x - mean) / scale, y)
    weight = probe.coef_[0] / scale
    bias = probe.intercept_[0] - float((probe.coef_[0] * mean / scale).sum())

    torch.manual_seed(0)  # the same random backbone and head as write_bundle's
    model, _ = create_model(CHEST, "resnet18")
    unknown = CHEST.index("unknown")
    with torch.no_grad():
        linear = model.head[1]
        linear.weight[unknown] += torch.tensor(3.0 * weight, dtype=torch.float32)
        linear.bias[unknown] += float(3.0 * bias)
    export_onnx(model, directory / ONNX_FILE, input_size=64)
    return add_profile(directory)


@contextmanager
def serve_with_users(
    tmp_path: Path, chest: Path, wrist: Path, users: dict[str, str], **settings: str
) -> Iterator[tuple[str, Any, Path]]:
    """``care-companion serve`` on a free port with both bundles, a migrated SQLite database and ``users``
    (username: role, department radiology, password :data:`PASSWORD`); yields (url, process, log) and prints the
    log's end on the way out (pytest shows it when the test fails)."""
    from care_companion.config import Settings
    from care_companion.records.db import upgrade
    from care_companion.workflows.accounts import open_account

    data_dir = tmp_path / "care-data"
    config = Settings(data_dir=data_dir)
    upgrade(config.db_url)
    for username, role in users.items():
        open_account(config, username=username, role=role, password=PASSWORD, department="radiology")
    port = free_port()
    env = service_env(data_dir, port, chest_model=str(chest), wrist_model=str(wrist), **settings)
    log = tmp_path / "service.log"
    url = f"http://127.0.0.1:{port}"
    try:
        args = [str(CLI), "serve", "--log-level", "warning"]
        with running(args, log=log, ready_url=f"{url}/ready", what="the service", env=env) as proc:
            yield url, proc, log
    finally:
        print(f"--- service log ({log}), shown by pytest when the test fails\n{tail(log)}")
