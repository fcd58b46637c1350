"""Heat maps: where on the film the model's answer comes from, from the class maps the ONNX model outputs.

The exported model's ``class_maps`` output holds, for each class, its last feature map weighted by the gradient
of the class's logit with respect to the pooled features (``BackboneClassifier.explained``); with mean pooling
that is Grad-CAM (Selvaraju et al. 2017) before its ReLU, up to scale, so serving needs neither torch nor a
second model run. Which map is shown:

* a positive decision: the map of the decided class against a normal reading, Grad-CAM of the log-odds
  ``logit_c - logit_negative`` (what the two classes share, the anatomy both read, cancels; the map of the logit
  alone peaked away from synthetic tuberculosis lesions in probes, see docs/guide/serving.md);
* a negative decision: the map of the disease probability P(abnormal), the sum of the disease classes'
  calibrated probabilities. Its gradient with respect to the logits is ``p_c (1[c is a disease] - P(abnormal))``
  (divided by the temperature, a scale), so its map is that combination of the class maps.

The map is ReLU'd, divided by its maximum (an all-zero map stays zero: nothing pushed towards the answer),
resized to the film and coloured; its alpha follows the value, so cold regions stay see-through. Each grid cell is
drawn where its receptive field is centred on the input (:class:`MapCentres`, measured on the trained model when
it is exported), which is not the middle of an even split of the film: for the demo's small ResNet at output
stride 8 it lies about 5 input pixels further down and right.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

from care_companion.tasks import TaskSpec

# A perceptually ordered colour scale (dark blue, teal, yellow-green, yellow), as (position, RGB) stops.
_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_COLOURS = np.array([[48, 18, 59], [40, 120, 142], [53, 183, 121], [180, 222, 44], [253, 231, 37]], dtype=float)


class MapCentres(BaseModel):
    """Where each row and column of a model's class maps is centred on its input, as fractions of the input side
    (0: top or left edge, 1: bottom or right edge); the input is the film resized to a square, so the same
    fractions hold on the film."""

    rows: list[float] = Field(description="Centre of each map row, top to bottom, as a fraction of the height.")
    cols: list[float] = Field(description="Centre of each map column, left to right, as a fraction of the width.")

    @classmethod
    def even(cls, height: int, width: int) -> MapCentres:
        """Cells of an even split: cell ``i`` of ``n`` centred at ``(i + 0.5) / n``."""
        return cls(rows=[(i + 0.5) / height for i in range(height)], cols=[(j + 0.5) / width for j in range(width)])


def class_weights(task: TaskSpec, probabilities: np.ndarray, decided: int) -> np.ndarray:
    """How the class maps combine into the shown map ``[C]``: for a decided disease (or other non-negative class)
    its logit minus the negative class's, else the gradient of P(abnormal) with respect to the logits (up to the
    temperature)."""
    p = np.asarray(probabilities, dtype=np.float64)
    if not task.positives:
        return np.eye(len(p))[decided]
    negative = task.index(task.negative)
    if decided != negative:
        return np.eye(len(p))[decided] - np.eye(len(p))[negative]
    disease = np.zeros(len(p))
    disease[task.positive_indices] = 1.0
    return p * (disease - p[task.positive_indices].sum())


def weighted(class_maps: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The weighted sum ``[h, w]`` of ``class_maps`` ``[C, h, w]``: Grad-CAM before its ReLU, up to scale."""
    return np.tensordot(np.asarray(weights, np.float64), np.asarray(class_maps, np.float64), axes=1)


def combine(class_maps: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The map ``[h, w]`` in [0, 1]: ReLU of the weighted sum of ``class_maps`` ``[C, h, w]``, over its maximum."""
    cam = np.maximum(weighted(class_maps, weights), 0.0)
    top = float(cam.max()) if cam.size else 0.0
    return cam / top if top > 0 else np.zeros_like(cam)


def _axis(size: int, centres: list[float]) -> np.ndarray:
    """Linear interpolation weights ``[size, n]`` from ``n`` cells centred at ``centres`` (fractions, increasing)
    to ``size`` pixels; pixels beyond the first or last centre take that cell's value."""
    n = len(centres)
    at = np.interp((np.arange(size) + 0.5) / size, centres, np.arange(n, dtype=np.float64))
    low = np.floor(at).astype(int)
    high = np.minimum(low + 1, n - 1)
    frac = at - low
    weights = np.zeros((size, n))
    np.add.at(weights, (np.arange(size), low), 1.0 - frac)
    np.add.at(weights, (np.arange(size), high), frac)
    return weights


def resize(cam: np.ndarray, height: int, width: int, centres: MapCentres | None = None) -> np.ndarray:
    """``cam`` ``[h, w]`` bilinearly resized to ``height`` x ``width`` (float32, same range), each cell placed at
    its ``centres`` (default: :meth:`MapCentres.even`)."""
    cam = np.asarray(cam, dtype=np.float64)
    where = centres or MapCentres.even(*cam.shape)
    if (len(where.rows), len(where.cols)) != cam.shape:
        raise ValueError(f"map of {cam.shape} cells with centres for {len(where.rows)} x {len(where.cols)}")
    return (_axis(height, where.rows) @ cam @ _axis(width, where.cols).T).astype(np.float32)


def colourise(cam: np.ndarray, *, max_alpha: int = 200) -> np.ndarray:
    """An RGBA image ``[H, W, 4]`` (uint8) of a map in [0, 1]: colour by value, alpha rising with it."""
    value = np.clip(np.asarray(cam, dtype=np.float64), 0.0, 1.0)
    rgb = np.stack([np.interp(value, _STOPS, _COLOURS[:, k]) for k in range(3)], axis=-1)
    alpha = max_alpha * np.sqrt(value)
    return np.concatenate([rgb, alpha[..., None]], axis=-1).round().astype(np.uint8)


def heatmap_png(
    cam: np.ndarray | list[list[float]], height: int, width: int, centres: MapCentres | None = None
) -> bytes:
    """PNG bytes of the coloured map resized to a film of ``height`` x ``width`` (cells at ``centres``)."""
    buffer = io.BytesIO()
    Image.fromarray(colourise(resize(np.asarray(cam), height, width, centres)), mode="RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def stored_heatmap_png(entry: Mapping[str, Any]) -> bytes:
    """PNG bytes of one view's heat map as a prediction keeps it (``grid``, ``height``, ``width``, ``centres``)."""
    centres = MapCentres.model_validate(entry["centres"]) if entry.get("centres") else None
    return heatmap_png(entry["grid"], int(entry["height"]), int(entry["width"]), centres)


def shown(task: TaskSpec, decided: int) -> str:
    """What the map of a decision explains: the decided class, or ``P(abnormal)`` for a negative decision."""
    return "P(abnormal)" if decided == task.index(task.negative) and task.positives else task.classes[decided]


def view_maps(
    task: TaskSpec,
    class_maps: np.ndarray,
    probabilities: np.ndarray,
    decided: int,
    present: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The shown map ``[h, w]`` in [0, 1] of each given view of one input, by view name.

    Args:
        task: the model's task.
        class_maps: the input's class maps, ``[C, h, w]`` (one view) or ``[V, C, h, w]``.
        probabilities: its calibrated probabilities ``[C]``.
        decided: the decided class index.
        present: ``[V]`` 1 where a view was given (None: every view).
    """
    maps = np.asarray(class_maps)
    maps = maps[None] if maps.ndim == 3 else maps
    weights = class_weights(task, probabilities, decided)
    given = np.ones(len(task.views)) if present is None else np.asarray(present)
    return {view: combine(maps[v], weights) for v, view in enumerate(task.views) if given[v] > 0.5}
