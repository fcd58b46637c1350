"""Figures of the drift report as PNG data URIs (matplotlib Agg, object-oriented API, no ``pyplot``).

Each function returns ``data:image/png;base64,...`` ready for an ``<img src>``, so the report is one file.
Matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from care_companion.evaluation.plots import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REFERENCE_COLOUR = "#4c72b0"
CURRENT_COLOUR = "#dd8452"


def _figure(width: float, height: float, nrows: int = 1, ncols: int = 1) -> tuple[Figure, Any]:
    """A figure on an Agg canvas and its axes, always as a 2-D array."""
    return new_figure(width, height, nrows, ncols, dpi=90, squeeze=False)


def _data_uri(fig: Figure) -> str:
    """The figure as a base64 PNG data URI (no software metadata: nothing in the report points elsewhere)."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    fig.clear()
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _ecdf(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.sort(np.asarray(values, dtype=np.float64))
    return x, np.arange(1, len(x) + 1) / max(len(x), 1)


def feature_ecdfs(reference: np.ndarray, current: np.ndarray, names: Sequence[str], statistics: Sequence[float]) -> str:
    """One panel per feature: the reference and current empirical CDFs (the KS statistic is their largest gap)."""
    columns = 5
    rows = max(1, -(-len(names) // columns))
    fig, axes = _figure(3.0 * columns, 2.4 * rows, rows, columns)
    for k, ax in enumerate(axes.ravel()):
        if k >= len(names):
            ax.set_visible(False)
            continue
        for values, colour, label in (
            (reference[:, k], REFERENCE_COLOUR, "reference"),
            (current[:, k], CURRENT_COLOUR, "current"),
        ):
            if len(values):
                x, y = _ecdf(values)
                ax.step(x, y, where="post", color=colour, label=label, linewidth=1.5)
        title = names[k] if k >= len(statistics) else f"{names[k]} (KS {statistics[k]:.2f})"
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=8)
        if k == 0:
            ax.legend(fontsize=8, loc="lower right")
    return _data_uri(fig)


def embedding_scatter(reference: np.ndarray, current: np.ndarray, explained: np.ndarray) -> str:
    """Reference and current embeddings on the first two principal components of the training embeddings."""
    fig, axes = _figure(6, 5)
    ax = axes[0, 0]

    def xy(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        points = np.asarray(points, dtype=np.float64).reshape(len(points), -1)
        second = points[:, 1] if points.shape[1] > 1 else np.zeros(len(points))
        return points[:, 0], second

    for points, colour, label, marker in (
        (reference, REFERENCE_COLOUR, "reference (validation)", "o"),
        (current, CURRENT_COLOUR, "current", "^"),
    ):
        if len(points):
            x, y = xy(points)
            ax.scatter(x, y, s=14, alpha=0.55, color=colour, marker=marker, label=f"{label}, n={len(points)}")
    shares = [f"{100 * float(v):.0f}%" for v in explained[:2]]
    ax.set_xlabel(f"PC1 ({shares[0]} of training variance)" if shares else "PC1")
    ax.set_ylabel(f"PC2 ({shares[1]} of training variance)" if len(shares) > 1 else "PC2")
    ax.legend(fontsize=8)
    return _data_uri(fig)


def grouped_bars(bins: Sequence[str], reference: Sequence[float], current: Sequence[float], ylabel: str) -> str:
    """Reference and current shares side by side per bin."""
    fig, axes = _figure(max(5.0, 0.7 * len(bins) + 2), 3.6)
    ax = axes[0, 0]
    x = np.arange(len(bins))
    ax.bar(x - 0.2, reference, width=0.4, color=REFERENCE_COLOUR, label="reference")
    ax.bar(x + 0.2, current, width=0.4, color=CURRENT_COLOUR, label="current")
    ax.set_xticks(x, list(bins), rotation=30 if len(bins) > 5 else 0, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return _data_uri(fig)
