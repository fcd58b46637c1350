"""Score cached training items (images, or studies of several views) with a bundle's ONNX Runtime engine."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from care_companion.data.datasets import ArrayData
from care_companion.evaluation.decision import decide
from care_companion.models.ood import LoadedGate
from care_companion.models.predictor import BundlePredictor, Feed, present_mask, softmax
from care_companion.tasks import TaskSpec


@dataclass(frozen=True)
class Scores:
    """What the engine makes of a batch: calibrated probabilities, decisions at the operating point, embeddings."""

    probabilities: np.ndarray  # [N, C]
    decided: np.ndarray  # [N] class indices, by the rule the service answers with
    embeddings: np.ndarray | None  # [N, D]; None for a model exported without an embedding output
    view_features: np.ndarray | None = None  # what the out-of-distribution gate scores (see engine_outputs)
    present: np.ndarray | None = None  # [N, V] views given, for multi-view input

    def gate_refuses(self, gate: LoadedGate | None, precision: str) -> np.ndarray:
        """Which items ``gate`` refuses [N] (none without a gate or view features)."""
        if gate is None or self.embeddings is None or self.view_features is None:
            return np.zeros(len(self.decided), dtype=bool)
        return gate.refuses(self.embeddings, self.view_features, self.present, precision)


def score_feed(predictor: BundlePredictor, feed: np.ndarray | Feed, task: TaskSpec) -> Scores:
    """Run a preprocessed batch through the bundle (embeddings and view features too, when the model has them)
    and decide it."""
    if predictor.has_embedding:
        logits, embeddings, views = predictor.engine_outputs(feed)
    else:
        logits, embeddings, views = predictor.logits(feed), None, None
    probs = softmax(logits, predictor.temperature)
    return Scores(probs, decide(probs, task, predictor.thresholds), embeddings, views, present_mask(feed))


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
