"""Shared fixtures: real data location (skipped where absent) and isolated settings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from care_companion.config import Settings
from care_companion.tasks import TaskSpec

if TYPE_CHECKING:
    import numpy as np
    import torch

# Progress bars stay quiet in tests (read through Settings.no_progress); tests/unit/test_progress.py renders them.
os.environ.setdefault("CARE_NO_PROGRESS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, skipping the calling test with a clear reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available at {path} (../shared/data is only present on project machines)")
    return path


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings whose data dir, store and MLflow store all live in a fresh temporary folder."""
    return Settings(data_dir=tmp_path / "care-data", seed=7)


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the CLI's settings at a fresh data dir (environment + cleared settings cache)."""
    from care_companion.config import get_settings

    data_dir = tmp_path / "care-data"
    monkeypatch.setenv("CARE_DATA_DIR", str(data_dir))
    for name in ("MLFLOW_TRACKING_URI", "CARE_MLFLOW_TRACKING_URI", "CARE_OBJECT_STORE"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield data_dir
    get_settings.cache_clear()


def write_bundle(
    directory: Path,
    *,
    logits: list[float] | None = None,
    input_size: int = 64,
    thresholds: dict | None = None,
    task: TaskSpec | None = None,
    backbone: str = "resnet18",
    fit: tuple[list[dict[str, np.ndarray | None]], list[int]] | None = None,
    reject_bias: float = 0.0,
    fit_steps: int = 12,
) -> Path:
    """A real model bundle (random ``backbone`` exported to ONNX) for serving tests; a chest bundle by default.

    With ``logits`` the head ignores the image and always answers those logits, so a test can choose the
    outcome (e.g. the "unknown" class for the 422 path); without, the weights are random. With ``fit`` (studies,
    class indices) the model takes ``fit_steps`` gradient steps on them first, so its answers differ from study to study
    (an untrained model answers every image nearly alike). ``reject_bias`` is added to the reject class's logit
    (e.g. -20: a random model that never refuses). Another ``task`` (e.g. ``WRIST``) gives that task's
    model: multi-view for a task with several views.
    """
    import torch

    from care_companion.models.bundle import CHECKPOINT_FILE, ONNX_FILE, BundleMeta, save_meta
    from care_companion.models.export import export_onnx
    from care_companion.models.factory import create_model
    from care_companion.models.predictor import study_feed
    from care_companion.tasks import CHEST

    task = task or CHEST
    torch.manual_seed(0)
    model, _ = create_model(task, backbone)
    linear = model.head[1]
    with torch.no_grad():
        if logits is not None:
            linear.weight.zero_()
            linear.bias.copy_(torch.tensor(logits))
        if task.reject is not None:
            linear.bias[task.index(task.reject)] += reject_bias
    meta = BundleMeta.for_task(
        task,
        backbone=backbone,
        input_size=input_size,
        thresholds=thresholds or {"abnormal": 0.5, **dict.fromkeys(task.positives, 0.5)},
        dataset_version="v-test",
    )
    save_meta(directory, meta)
    if fit is not None:
        feed = study_feed(meta, fit[0])
        inputs = [torch.from_numpy(value) for value in feed.values()]  # in the model's input order
        fit_briefly(model, inputs, torch.tensor(fit[1]), steps=fit_steps)
    export_onnx(model.eval(), directory / ONNX_FILE, input_size=input_size)
    torch.save(model.state_dict(), directory / CHECKPOINT_FILE)
    return directory


def fit_briefly(
    model: torch.nn.Module, inputs: list[torch.Tensor], labels: torch.Tensor, steps: int = 12
) -> list[float]:
    """``steps`` AdamW steps of ``model`` on one batch; the losses."""
    import torch
    import torch.nn.functional as F

    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(steps):
        optimiser.zero_grad()
        loss = F.cross_entropy(model(*inputs), labels)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return losses


def add_profile(directory: Path, *, per_class: int = 30, size: int = 96, seed: int = 0) -> Path:
    """Give a bundle written by :func:`write_bundle` a drift reference profile computed on synthetic images
    (chest: generated films of each class and photographs; wrist: generated two-view studies)."""
    import numpy as np

    from care_companion.data.datasets import ArrayData
    from care_companion.data.synthetic_chest import natural_images, synth_chest
    from care_companion.data.synthetic_wrist import WRIST_VIEWS, synthetic_wrist_studies
    from care_companion.models.bundle import load_meta
    from care_companion.workflows.profiling import profile_from_arrays

    task = load_meta(directory).task_spec()

    def split(offset: int) -> tuple[list[np.ndarray], ArrayData]:
        rng = np.random.default_rng(seed + offset)
        if task.name == "wrist":
            studies = synthetic_wrist_studies(2 * per_class, seed=seed + offset, size=size, fracture_rate=0.5)
            images = [image for s in studies for image in s.views.values()]
            views, k = np.full((len(studies), len(WRIST_VIEWS)), -1), 0
            for i, s in enumerate(studies):
                for j, view in enumerate(WRIST_VIEWS):
                    if view in s.views:
                        views[i, j], k = k, k + 1
            labels = np.array([task.index(s.label) for s in studies])
            data = ArrayData(images=np.stack(images), labels=labels, views=views, view_names=WRIST_VIEWS)
            return images, data
        films = [(synth_chest(c, rng, size), task.index(c)) for c in task.clinical_classes for _ in range(per_class)]
        photos = [(p, task.index("unknown")) for p in natural_images(rng, per_class // 2, size)]
        items = films + photos
        data = ArrayData(images=np.stack([i for i, _ in items]), labels=np.array([c for _, c in items]))
        return [i for i, _ in films], data

    originals, train = split(0)
    _, val = split(1)
    profile_from_arrays(directory, task, images=originals, train=train, val=val, seed=seed)
    return directory
