"""Score cached training items (images, or studies of several views) with a bundle's ONNX Runtime engine."""

from __future__ import annotations

import numpy as np

from care_companion.data.datasets import ArrayData
from care_companion.models.predictor import BundlePredictor, Feed, softmax


def model_feed(predictor: BundlePredictor, data: ArrayData, index: np.ndarray | None = None) -> np.ndarray | Feed:
    """The engine's input for the items at ``index`` (default: all) of ``data``."""
    idx = np.arange(len(data)) if index is None else index
    if data.views is None:
        return predictor.preprocess(list(data.images[idx]))
    return predictor.preprocess_studies([data.study(int(i)) for i in idx])


def item_logits(predictor: BundlePredictor, data: ArrayData) -> np.ndarray:
    """Raw logits [N, C] of every item of ``data``."""
    return predictor.logits(model_feed(predictor, data))


def item_probabilities(predictor: BundlePredictor, data: ArrayData) -> np.ndarray:
    """Calibrated probabilities [N, C] of every item of ``data`` (the temperature of the model file run)."""
    return softmax(item_logits(predictor, data), predictor.temperature)
