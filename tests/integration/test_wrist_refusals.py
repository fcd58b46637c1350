"""The wrist endpoint refuses what is not a wrist radiograph, with a model trained as a user would train it.

Real films: FracAtlas hand films are the wrist data set, imported with the import's defaults (other regions'
films, the chest films already in the store and generated photos join the reject class 'unknown'; here only
leg films, so hip and shoulder films stay unseen). A small model is trained, then served; chest films from a
source no data set holds, photographs, rendered screenshots and hip/shoulder films get 422
``not_a_wrist_radiograph`` from the reject class or the out-of-distribution gate, while most unseen hand films
get a finding.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from care_companion.config import Settings
from care_companion.data.chest import import_chest
from care_companion.data.manifest import load_manifest
from care_companion.data.rejects import NO_REJECTS, RejectSources
from care_companion.data.wrist import import_fracatlas
from care_companion.storage import store_from_settings
from care_companion.tasks import WRIST
from care_companion.training.trainer import TrainConfig
from care_companion.workflows.training import train_task
from tests.conftest import shared_path
from tests.helpers import service_client

pytestmark = [pytest.mark.slow, pytest.mark.integration]

CODE = WRIST.refusal_code


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _screenshot(seed: int) -> np.ndarray:
    """A window with a title bar, text lines and buttons."""
    rng = np.random.default_rng(seed)
    image = Image.new("L", (640, 420), 240)
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 0, 640, 32], fill=90)
    draw.text((10, 10), "Worklist - Care Companion", fill=255)
    for row in range(12):
        draw.text((20, 50 + 25 * row), " ".join("abc"[: int(rng.integers(1, 4))] * 3 for _ in range(6)), fill=20)
    draw.rectangle([500, 370, 620, 400], fill=120, outline=20)
    return np.asarray(image)


@pytest.fixture(scope="module")
def served_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Path, set[str]]:
    """A wrist model trained on FracAtlas hand films with the import's reject defaults (leg films only)."""
    root = tmp_path_factory.mktemp("wrist-refusals")
    settings = Settings(data_dir=root / "care-data", seed=3, model_poll_seconds=0, gate_min_sensitivity=0.0)
    store = store_from_settings(settings)
    import_chest([shared_path("cxr-real")], store, seed=3, rejects=NO_REJECTS, workers=1)
    imported = import_fracatlas(
        shared_path("fracatlas"), store, seed=3, region="hand", limit=300, other_regions=["leg"],
        other_regions_max=150, rejects=RejectSources(non_xray=150, other_tasks_max=150), workers=1,
    )  # fmt: skip
    assert imported.counts["other-task:chest"] == {"unknown": 150}
    config = TrainConfig(
        backbone="test_resnet", image_size=64, batch_size=16, head_epochs=0, finetune_epochs=4,
        samples_per_epoch=400, patience=10, seed=3,
    )  # fmt: skip
    outcome = train_task(WRIST, config, settings=settings, dataset_version=imported.version)
    used = {Path(p).name for p in load_manifest(store, "wrist").frame["path"]}
    return settings, outcome.bundle_dir, used


def _fracatlas(keep: callable, count: int, used: set[str]) -> list[Path]:  # type: ignore[valid-type]
    root = shared_path("fracatlas")
    with (root / "dataset.csv").open() as handle:
        rows = [r for r in csv.DictReader(handle) if keep(r) and r["image_id"] not in used]
    paths = {p.name: p for p in (root / "images").rglob("*.jpg")}
    return [paths[r["image_id"]] for r in rows[:count]]


def test_the_wrist_endpoint_refuses_chest_films_photos_and_other_body_parts(
    served_bundle: tuple[Settings, Path, set[str]], tmp_path: Path
) -> None:
    _, bundle, used = served_bundle
    from sklearn.datasets import load_sample_images

    photos = [np.asarray(Image.fromarray(p).convert("L")) for p in load_sample_images().images]
    chest = sorted(shared_path("kermany-train").rglob("*.jp*g"))[::400][:8]  # a source no data set here holds
    others = _fracatlas(lambda r: r["hand"] == "0" and r["leg"] == "0", 20, used)  # hip and shoulder: unseen
    hands = _fracatlas(lambda r: r["hand"] == "1" and r["mixed"] == "0", 12, used)
    uploads = {f"chest:{p.name}": p.read_bytes() for p in chest}
    uploads |= {f"photo:{i}": _png(p) for i, p in enumerate(photos)}
    uploads |= {f"screenshot:{i}": _png(_screenshot(i)) for i in range(3)}
    with service_client(tmp_path / "serve", wrist_model=str(bundle), orphan_sweep_seconds=0) as client:

        def code(files: dict[str, tuple[str, bytes]]) -> str:
            response = client.post("/v1/predict/wrist", files=files)
            assert response.status_code in (200, 422), response.text
            return "finding" if response.status_code == 200 else response.json()["error"]

        answers = {
            name: [code({view: (f"{name}.png", data)}) for view in WRIST.views] for name, data in uploads.items()
        }
        wrong = {name: a for name, a in answers.items() if a != [CODE, CODE]}
        assert not wrong, f"non-wrist uploads given a finding (per view pa, lateral): {wrong}"
        two_chest = code({"pa": ("a.jpg", chest[0].read_bytes()), "lateral": ("b.jpg", chest[1].read_bytes())})
        assert two_chest == CODE
        refused = [code({"pa": (p.name, p.read_bytes())}) == CODE for p in others]
        assert sum(refused) >= 0.85 * len(others), f"only {sum(refused)} of {len(others)} hip/shoulder films refused"
        found = [code({"pa": (p.name, p.read_bytes())}) == "finding" for p in hands]
        assert sum(found) >= len(hands) // 2, f"only {sum(found)} of {len(hands)} unseen hand films got a finding"
