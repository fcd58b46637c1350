"""The command line end to end on synthetic data: import → train → registry → evaluate → promote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from care_companion.cli.main import app
from care_companion.data.synthetic_chest import write_synthetic_chest_tree
from care_companion.monitoring.profile import ReferenceProfile

pytestmark = [pytest.mark.slow]

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, list(args), catch_exceptions=False)
    return result


def train_tiny(size: int, epochs: int, samples: int, *extra: str):
    """``train chest`` with timm's tiny test network: seconds, not minutes."""
    return invoke(
        "train", "chest", "--backbone", "test_resnet", "--image-size", str(size), "--finetune-epochs", str(epochs),
        "--samples-per-epoch", str(samples), *extra,
    )  # fmt: skip


def test_cli_spine_on_synthetic_data(cli_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    src = tmp_path / "synthetic"
    write_synthetic_chest_tree(src, 40, seed=1, size=128, include_unknown=False)
    monkeypatch.setenv("CARE_GATE_MIN_SENSITIVITY", "0.0")
    monkeypatch.setenv("CARE_GATE_MIN_AUC", "0.0")

    imported = invoke("data", "import", "chest", str(src), "--non-xray", "30", "--workers", "1")
    assert imported.exit_code == 0, imported.output
    assert "version: v-" in imported.output

    trained = train_tiny(48, 2, 256)
    assert trained.exit_code == 0, trained.output
    bundle = Path(trained.output.strip().splitlines()[-1])
    assert (bundle / "bundle.json").is_file() and (bundle / "model.onnx").is_file()
    assert "registered chest version 1" in trained.output
    assert "INT8 model:" in trained.output and (bundle / "model.int8.onnx").is_file()
    profile = ReferenceProfile.load(bundle / "reference_profile.npz")  # drift monitoring's reference
    assert set(profile.embeddings) == {"fp32", "int8"} and profile.task == "chest"
    assert len(profile.features) == profile.counts["feature_images"] > 0
    assert profile.class_mix.sum() == pytest.approx(1.0) and 0 <= profile.rejection_rate <= 1

    listed = invoke("registry", "list", "--task", "chest")
    assert listed.exit_code == 0 and "staging" in listed.output

    out = tmp_path / "eval.json"
    evaluated = invoke(
        "evaluate",
        "--model",
        "models:/chest@staging",
        "--data",
        str(src),
        "--json-out",
        str(out),
        "--n-boot",
        "20",
        "--workers",
        "1",
    )
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(out.read_text())
    for key in ("n", "classes", "auc_abnormal", "sensitivity_abnormal", "specificity_abnormal", "per_class"):
        assert key in report
    assert report["n"] == 120 and set(report["per_class"]["pneumonia"]) >= {"sensitivity", "specificity", "auc"}

    same = invoke("evaluate", "--model", str(bundle), "--data", str(src), "--n-boot", "0", "--workers", "1")
    assert same.exit_code == 0, same.output

    html = tmp_path / "drift.html"
    drift = invoke(
        "drift", "report", "--reference", "models:/chest@staging", "--current", str(src), "--out", str(html)
    )  # the registered copy carries the profile too
    assert drift.exit_code in (0, 3), drift.output
    assert html.is_file() and "Holm" in html.read_text()

    promoted = invoke("registry", "promote", "--task", "chest", "--version", "1", "--to", "production")
    assert promoted.exit_code == 0 and "chest@production -> version 1" in promoted.output
    bad = invoke("registry", "promote", "--task", "chest", "--version", "1", "--to", "prod")
    assert bad.exit_code == 2 and "error" in bad.output


def test_cli_gate_refusal_exits_non_zero(cli_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    src = tmp_path / "synthetic"
    write_synthetic_chest_tree(src, 15, seed=2, size=96, include_unknown=False)
    monkeypatch.setenv("CARE_GATE_MIN_SENSITIVITY", "1.01")
    assert invoke("data", "import", "chest", str(src), "--non-xray", "10", "--workers", "1").exit_code == 0
    trained = train_tiny(32, 1, 64)
    assert trained.exit_code == 3
    assert "gate refused" in trained.output and "sensitivity" in trained.output
    assert Path(trained.output.strip().splitlines()[-1], "bundle.json").is_file()


def test_cli_errors_are_one_line_messages(cli_env: Path, tmp_path: Path):
    missing = invoke("train", "chest")
    assert missing.exit_code == 2 and "data import chest" in missing.output
    bad_option = invoke("train", "chest", "--precision", "fp8")
    assert bad_option.exit_code == 2 and "precision" in bad_option.output
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = invoke("data", "import", "chest", str(empty))
    assert nothing.exit_code == 2 and "no images under class folders" in nothing.output
    no_model = invoke("evaluate", "--model", str(empty), "--data", str(empty))
    assert no_model.exit_code == 2 and "bundle" in no_model.output


def test_fetch_without_credentials_says_what_to_provide(cli_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path):
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle"))
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    result = invoke("data", "fetch", "chest", "--target", str(tmp_path / "dl"))
    assert result.exit_code == 2 and "kaggle.json" in result.output and "KAGGLE_KEY" in result.output


def test_help_explains_every_group():
    for group in ("data", "train", "registry"):
        result = invoke(group, "--help")
        assert result.exit_code == 0
    train_help = invoke("train", "chest", "--help").output
    for option in ("--backbone", "--head-epochs", "--finetune-lr", "--pretrained", "--init-weights", "--no-int8"):
        assert option in train_help
    serve_help = invoke("serve", "--help").output
    for option in ("--chest-model", "--alias", "--max-batch-size", "--precision", "--port"):
        assert option in serve_help
    assert "--serve" in invoke("demo", "--help").output


def test_init_weights_from_the_registry(cli_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    src = tmp_path / "synthetic"
    write_synthetic_chest_tree(src, 12, seed=4, size=96, include_unknown=False)
    monkeypatch.setenv("CARE_GATE_MIN_SENSITIVITY", "0.0")
    monkeypatch.setenv("CARE_GATE_MIN_AUC", "0.0")
    assert invoke("data", "import", "chest", str(src), "--non-xray", "10", "--workers", "1").exit_code == 0
    assert train_tiny(32, 1, 64).exit_code == 0
    again = train_tiny(32, 1, 64, "--head-epochs", "1", "--init-weights", "models:/chest@staging")
    assert again.exit_code == 0, again.output
    meta = json.loads(Path(again.output.strip().splitlines()[-1], "bundle.json").read_text())
    assert meta["training"]["init"].startswith("local checkpoint")
    assert "bundles" in meta["training"]["init_weights"]  # the registry bundle's checkpoint was used
