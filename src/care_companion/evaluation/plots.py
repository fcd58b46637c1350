"""Evaluation figures: ROC curves, confusion matrix, reliability diagram (PNG, matplotlib Agg).

Figures are built with the object-oriented API on an Agg canvas, never through ``pyplot``: no global figure
state, no GUI backend, safe in worker threads. Matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from care_companion.evaluation.decision import p_abnormal
from care_companion.evaluation.metrics import EvaluationReport, reliability_bins
from care_companion.tasks import TaskSpec

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PLOT_FILES = {"roc": "roc.png", "confusion": "confusion.png", "reliability": "reliability.png"}


def new_figure(
    width: float, height: float, nrows: int = 1, ncols: int = 1, *, dpi: int = 100, **subplots: Any
) -> tuple[Figure, Any]:
    """A figure on an Agg canvas and its axes (``Figure.subplots(nrows, ncols, **subplots)``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, **subplots)


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    fig.clear()
    return path


def plot_roc(y_true: np.ndarray, probs: np.ndarray, task: TaskSpec, path: Path) -> Path:
    """ROC of P(abnormal) (non-reject images) and one-vs-rest ROC per disease class, AUC in the legend."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.asarray(y_true).astype(np.int64).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    clinical = np.ones(y.size, dtype=bool) if task.reject is None else y != task.index(task.reject)
    curves = [("abnormal", np.isin(y[clinical], task.positive_indices), p_abnormal(probs, task)[clinical], 2.5)]
    for name, c in zip(task.positives, task.positive_indices, strict=True):
        curves.append((name, y == c, probs[:, c], 1.5))

    fig, ax = new_figure(6, 6)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    for name, positive, score, width in curves:
        if positive.all() or not positive.any():
            ax.plot([], [], " ", label=f"{name}: AUC n/a (one class only)")
            continue
        fpr, tpr, _ = roc_curve(positive, score)
        ax.plot(fpr, tpr, linewidth=width, label=f"{name}: AUC {roc_auc_score(positive, score):.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity", ylabel="sensitivity", title=f"{task.name}: ROC")
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_confusion(report: EvaluationReport, path: Path) -> Path:
    """Confusion matrix (rows: true, columns: decided) with counts and row percentages."""
    cm = np.asarray(report.confusion_matrix, dtype=np.float64)
    labels = report.confusion_labels
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)

    size = 1.4 * len(labels) + 2
    fig, ax = new_figure(size, size)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="decided", ylabel="true", title=f"{report.task}: confusion at the operating point")
    for i in range(len(labels)):
        for j in range(len(labels)):
            colour = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, f"{int(cm[i, j])}\n{share[i, j]:.0%}", ha="center", va="center", color=colour, fontsize=9)
    return _save(fig, path)


def plot_reliability(y_true: np.ndarray, probs: np.ndarray, path: Path) -> Path:
    """Reliability diagram (accuracy vs top-class confidence, 15 bins) above a confidence histogram."""
    bins = reliability_bins(y_true, probs)
    edges = np.asarray(bins.edges)
    width = np.diff(edges)
    centres = edges[:-1] + width / 2
    accuracy = np.array([np.nan if a is None else a for a in bins.accuracy])
    confidence = np.array([np.nan if c is None else c for c in bins.confidence])

    fig, (top, bottom) = new_figure(6, 7.5, 2, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    top.bar(centres, np.nan_to_num(accuracy), width=width, edgecolor="black", alpha=0.8, label="accuracy")
    gap_bottom = np.fmin(accuracy, confidence)
    top.bar(
        centres,
        np.nan_to_num(np.abs(confidence - accuracy)),
        bottom=np.nan_to_num(gap_bottom),
        width=width,
        color="red",
        alpha=0.3,
        label="gap to confidence",
    )
    ece = "n/a" if bins.ece is None else f"{bins.ece:.3f}"
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=f"reliability (ECE {ece})")
    top.legend(loc="upper left")
    bottom.bar(centres, bins.count, width=width, edgecolor="black", color="tab:blue")
    bottom.set(xlabel="top-class confidence", ylabel="images")
    return _save(fig, path)


def write_plots(
    y_true: np.ndarray, probs: np.ndarray, task: TaskSpec, report: EvaluationReport, out_dir: Path
) -> dict[str, Path]:
    """Write roc.png, confusion.png and reliability.png into ``out_dir``; returns name -> path."""
    out = Path(out_dir)
    return {
        "roc": plot_roc(y_true, probs, task, out / PLOT_FILES["roc"]),
        "confusion": plot_confusion(report, out / PLOT_FILES["confusion"]),
        "reliability": plot_reliability(y_true, probs, out / PLOT_FILES["reliability"]),
    }
