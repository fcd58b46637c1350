"""Wrist fractures end to end on real FracAtlas films: import (hand region) → a tiny 2-worker Ray Train run →
gate (registered or refused) → ONNX bundle → evaluate on a FracAtlas-layout folder → served study by study."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from care_companion.cli.common import EXIT_GATE
from care_companion.cli.main import app
from care_companion.models.bundle import load_meta
from care_companion.tasks import WRIST
from tests.conftest import shared_path
from tests.helpers import service_client

pytestmark = [pytest.mark.slow, pytest.mark.integration]
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def small_fracatlas(src: Path, target: Path, per_class: int) -> Path:
    """A FracAtlas-layout folder with the first ``per_class`` hand films of each class (for a quick evaluate)."""
    with (src / "dataset.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    picked = []
    for fractured in ("1", "0"):
        hand = [r for r in rows if r["hand"] == "1" and r["mixed"] == "0" and r["fractured"] == fractured]
        picked += hand[:per_class]
    for row in picked:
        folder = "fractured" if row["fractured"] == "1" else "not_fractured"
        (target / "images" / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(src / "images" / folder / row["image_id"], target / "images" / folder / row["image_id"])
    with (target / "dataset.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(picked)
    return target


def test_fracatlas_to_a_served_wrist_model_through_ray(cli_env: Path, tmp_path: Path) -> None:
    fracatlas = shared_path("fracatlas")
    # The reject class is tested in test_wrist_refusals: this tiny model only shows the Ray path.
    no_rejects = ["--non-xray", "0", "--other-region", "none", "--no-other-tasks"]
    args = ["data", "import", "fracatlas", str(fracatlas), "--region", "hand", "--limit", "160", "--workers", "1"]
    imported = invoke(*args, *no_rejects)
    assert imported.exit_code == 0, imported.output

    trained = invoke(
        "train", "wrist", "--workers", "2", "--backbone", "test_resnet", "--image-size", "64",
        "--batch-size", "16", "--finetune-epochs", "2", "--samples-per-epoch", "64",
    )  # fmt: skip
    assert trained.exit_code in (0, EXIT_GATE), trained.output
    bundle = Path(trained.output.strip().splitlines()[-1])
    meta = load_meta(bundle)
    assert meta.task == "wrist" and meta.multiview and (bundle / "model.onnx").is_file()
    assert meta.training["workers"] == 2
    evaluation = json.loads((bundle / "evaluation.json").read_text())
    assert {"sensitivity", "specificity", "auc"} <= set(evaluation) and evaluation["positives"] == ["fracture"]
    if trained.exit_code == 0:
        assert "registered wrist version 1" in trained.output
    else:
        assert "gate refused" in trained.output

    folder = small_fracatlas(fracatlas, tmp_path / "fracatlas-small", per_class=6)
    out = tmp_path / "wrist-eval.json"
    evaluated = invoke(
        "evaluate", "--task", "wrist", "--model", str(bundle), "--data", str(folder), "--json-out", str(out)
    )
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(out.read_text())
    assert report["n"] == 12 and report["n_per_class"] == {"normal": 6, "fracture": 6, WRIST.reject: 0}
    assert set(report["by_group"]["views"]) <= {"pa", "lateral"}
    wrong_task = invoke("evaluate", "--task", "chest", "--model", str(bundle), "--data", str(folder))
    assert wrong_task.exit_code != 0 and "is a wrist model" in wrong_task.output

    film = next((folder / "images" / "fractured").iterdir())
    with service_client(tmp_path / "serve", wrist_model=str(bundle), orphan_sweep_seconds=0) as client:
        response = client.post("/v1/predict/wrist", files={"pa": (film.name, film.read_bytes(), "image/jpeg")})
    # Eight training steps leave the reject class (no images in this data set) near 1/3: a refusal is the model's
    # answer too; either way the served two-view model read the PA film alone.
    assert response.status_code in (200, 422), response.text
    if response.status_code == 422:
        assert response.json()["error"] == WRIST.refusal_code
        return
    body = response.json()
    assert body["views_used"] == ["pa"] and body["confidence"] == "low" and body["model"]["name"] == "wrist"
