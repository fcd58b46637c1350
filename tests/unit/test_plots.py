from __future__ import annotations

from pathlib import Path

import numpy as np

from care_companion.evaluation.metrics import evaluate_predictions
from care_companion.evaluation.plots import plot_confusion, plot_reliability, plot_roc, write_plots
from care_companion.tasks import CHEST

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _data(n: int, classes: int):
    rng = np.random.default_rng(0)
    y = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, 4))
    logits[np.arange(n), y] += 1.5
    probs = np.exp(logits)
    return y, probs / probs.sum(axis=1, keepdims=True)


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def test_write_plots(tmp_path: Path):
    y, probs = _data(200, 4)
    report = evaluate_predictions(y, probs, CHEST, {}, n_boot=0)
    paths = write_plots(y, probs, CHEST, report, tmp_path / "plots")
    assert set(paths) == {"roc", "confusion", "reliability"}
    assert {p.name for p in paths.values()} == {"roc.png", "confusion.png", "reliability.png"}
    assert all(_is_png(p) for p in paths.values())


def test_plots_with_absent_classes(tmp_path: Path):
    y, probs = _data(60, 2)  # no tuberculosis, no reject-class images
    report = evaluate_predictions(y, probs, CHEST, {}, n_boot=0)
    assert _is_png(plot_roc(y, probs, CHEST, tmp_path / "roc.png"))
    assert _is_png(plot_confusion(report, tmp_path / "confusion.png"))
    assert _is_png(plot_reliability(y, probs, tmp_path / "reliability.png"))
    # a single class: no ROC curve can be drawn, the figure is still written
    only_normal = np.zeros(10, dtype=int)
    assert _is_png(plot_roc(only_normal, probs[:10], CHEST, tmp_path / "roc1.png"))
