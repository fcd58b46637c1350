"""Build a bundle's out-of-distribution gate (see :mod:`care_companion.models.ood`) from its exported ONNX model.

Run at training time after the bundle (and its INT8 model) is written: each part's Gaussians (the study
embedding of a multi-view model, each view's features) are fitted to the training split's clinical films, each
part's scores are divided by its validation median (so the parts speak one scale), and one threshold on the
worst part is chosen on the validation split's clinical studies the reject class accepts, class by class; an
INT8 model gets Gaussians and a threshold of its own, from its own features, so whichever precision is served
refuses at most the chosen share of real films.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from care_companion.data.datasets import ArrayData
from care_companion.evaluation.decision import decide
from care_companion.models.bundle import INT8_FILE, load_meta, save_meta
from care_companion.models.ood import (
    DEFAULT_MAX_REFUSAL,
    OOD_FILE,
    GateModels,
    OodGate,
    OodModel,
    choose_threshold,
    gate_scores,
    load_gate,
    save_models,
)
from care_companion.models.predictor import BundlePredictor, Feed, present_mask, softmax
from care_companion.tasks import TaskSpec
from care_companion.workflows.scoring import model_feed, score_feed

log = logging.getLogger(__name__)


def clinical_index(data: ArrayData, task: TaskSpec, *, max_items: int | None = None, seed: int = 0) -> np.ndarray:
    """Indices of the items of ``data`` whose label is a clinical class (not the reject class), at most
    ``max_items`` of them (a seeded sample)."""
    index = np.arange(len(data))
    if task.reject is not None:
        index = index[data.labels != task.index(task.reject)]
    if max_items is not None and len(index) > max_items:
        index = np.sort(np.random.default_rng(seed).choice(index, max_items, replace=False))
    return index


@dataclass(frozen=True)
class GateFeatures:
    """What the gate reads of some items: labels, embeddings, each view's features and which views were given."""

    labels: np.ndarray  # [N]
    embeddings: np.ndarray  # [N, D]
    views: np.ndarray  # [N, V, F]
    present: np.ndarray  # [N, V]
    accepted: np.ndarray  # [N] the reject class is not the decision (all True for a task without one)


def gate_features_of(predictor: BundlePredictor, feed: np.ndarray | Feed, labels: np.ndarray) -> GateFeatures:
    """The gate's features of a preprocessed batch with its ``labels``."""
    logits, embeddings, views = predictor.engine_outputs(feed)
    present = present_mask(feed)
    views = views if views.ndim == 3 else views[:, None, :]  # a one-view model's embeddings are its one view's
    task = predictor.meta.task_spec()
    decided = decide(softmax(logits, predictor.temperature), task, predictor.thresholds)
    accepted = decided != task.index(task.reject) if task.reject else np.ones(len(labels), dtype=bool)
    return GateFeatures(labels, embeddings, views, np.ones((len(labels), 1)) if present is None else present, accepted)


def gate_threshold(
    scores: np.ndarray, accepted: np.ndarray, max_refusal: float, labels: np.ndarray | None = None
) -> tuple[float, float, int]:
    """The refusal threshold on validation scores: at most ``max_refusal`` of the films the reject class accepts
    are refused, of each clinical class (``labels``) on its own (the share refused overall, and how many films it
    was chosen on).

    Films the reject class refuses anyway do not set it: on a FracAtlas wrist model the two highest of 64
    validation scores (9.2 and 3.8 medians, against 3.0 next) were films its reject class refused, and the largest
    alone, as the threshold, let 52% of chest films and 80% of hip and shoulder films past the gate. Each class
    counts on its own because a threshold over all films refused 4 of 19 real tuberculosis test films of a chest
    model (and no normal or pneumonia film): a rare class's films lie further from the Gaussians. With fewer than
    two accepted films every film counts."""
    keep = accepted if np.count_nonzero(accepted) >= 2 else np.ones(len(scores), dtype=bool)
    chosen, classes = scores[keep], (np.zeros(len(scores), int) if labels is None else np.asarray(labels))[keep]
    threshold = max(choose_threshold(chosen[classes == c], max_refusal)[0] for c in np.unique(classes))
    return threshold, float((chosen > threshold).mean()), len(chosen)


def fit_part(train: np.ndarray, labels: np.ndarray, val: np.ndarray) -> OodModel:
    """One part's Gaussians, its scores divided by their validation median.

    The median only puts the parts on one scale; the refusal share is set once, by the threshold on the worst
    part. Scaling each part by its own 1% quantile instead refuses about the sum of the parts' shares, and on a
    small validation split each such quantile is the part's largest score: a FracAtlas wrist model (three parts,
    39 and 25 validation studies with a PA and a lateral view) refused 10% of its real test studies that way.
    """
    model = OodModel.fit(train, labels)
    return model.scaled(float(np.median(model.score(val))))


def fit_parts(fit: GateFeatures, val: GateFeatures, *, study: bool) -> list[OodModel]:
    """The gate's models: the study embedding's first when ``study``, then one per view (fitted on the training
    items that have the view, scaled on the validation items that have it)."""
    models = [fit_part(fit.embeddings, fit.labels, val.embeddings)] if study else []
    for v in range(fit.views.shape[1]):
        rows, held = fit.present[:, v] > 0.5, val.present[:, v] > 0.5
        if rows.sum() < 2 or not held.any():
            raise ValueError(f"too few items with view {v} for the gate ({rows.sum()} training, {held.sum()} held)")
        models.append(fit_part(fit.views[rows, v], fit.labels[rows], val.views[held, v]))
    return models


def build_ood_gate(
    bundle_dir: Path,
    task: TaskSpec,
    *,
    train: ArrayData,
    val: ArrayData,
    max_refusal: float = DEFAULT_MAX_REFUSAL,
    max_items: int = 3000,
    seed: int = 0,
) -> OodGate:
    """Fit the gate of the bundle in ``bundle_dir``, write ``ood.npz`` into it and record it in ``bundle.json``.

    Args:
        bundle_dir: the exported bundle (its model must have the embedding output).
        task: the bundle's task.
        train: training items (model inputs at the bundle's size); the clinical ones fit the Gaussians.
        val: validation items; the clinical ones scale each part's scores and choose the threshold.
        max_refusal: largest share of validation task studies the threshold may refuse.
        max_items: training items sampled for the fit.
        seed: sampling seed.
    """
    fit_on = clinical_index(train, task, max_items=max_items, seed=seed)
    held = clinical_index(val, task)
    if len(fit_on) < 2 or not len(held):
        raise ValueError(f"too few clinical items for the gate ({len(fit_on)} training, {len(held)} validation)")
    meta = load_meta(bundle_dir)
    precisions = ["fp32"]
    if meta.int8 is not None and (bundle_dir / (meta.int8.file or INT8_FILE)).is_file():
        precisions.append("int8")
    models: GateModels = {}
    thresholds, refused = {}, {}
    fp32 = BundlePredictor(bundle_dir, precision="fp32")  # both precisions take the same preprocessed inputs
    fit_feed, held_feed = model_feed(fp32, train, fit_on), model_feed(fp32, val, held)
    for precision in precisions:  # an INT8 model's features differ enough to need Gaussians of their own
        predictor = fp32 if precision == "fp32" else BundlePredictor(bundle_dir, precision=precision)
        checked = gate_features_of(predictor, held_feed, val.labels[held])
        fitted = gate_features_of(predictor, fit_feed, train.labels[fit_on])
        models[precision] = fit_parts(fitted, checked, study=task.multiview)
        scores = gate_scores(
            models[precision], checked.embeddings, checked.views, checked.present, study=task.multiview
        )
        thresholds[precision], refused[precision], chosen_on = gate_threshold(
            scores, checked.accepted, max_refusal, checked.labels
        )
    save_models(models, bundle_dir / OOD_FILE)
    gate = OodGate(
        thresholds=thresholds,
        max_refusal=max_refusal,
        validation_refused=refused,
        shrinkage=max(m.shrinkage for m in models["fp32"]),
        classes=[task.classes[int(c)] for c in np.unique(train.labels[fit_on])],
        counts={"fit_items": len(fit_on), "validation_items": len(held), "threshold_items": chosen_on},
        views=list(task.views),
        study=task.multiview,
    )
    meta.ood = gate
    save_meta(bundle_dir, meta)
    log.info(
        "out-of-distribution gate (%s): fitted on %d training items, threshold %s refuses %s of %d validation items",
        ", ".join(["study"] * gate.study + gate.views),
        len(fit_on),
        ", ".join(f"{k} {v:.3f}" for k, v in thresholds.items()),
        ", ".join(f"{k} {v:.1%}" for k, v in refused.items()),
        len(held),
    )
    return gate


GATE_GROUP = "ood_gate"


def gated_probabilities(predictor: BundlePredictor, feed: np.ndarray | Feed) -> tuple[np.ndarray, np.ndarray | None]:
    """Calibrated probabilities ``[N, C]`` of a preprocessed batch and, when the bundle has an out-of-distribution
    gate, which items it refuses ``[N]`` (the service's rule at the engine's precision; None without a gate)."""
    gate = load_gate(predictor.directory, predictor.meta.ood) if predictor.has_embedding else None
    if gate is None:
        return softmax(predictor.logits(feed), predictor.temperature), None
    scores = score_feed(predictor, feed, predictor.meta.task_spec())
    return scores.probabilities, scores.gate_refuses(gate, predictor.precision)


def gate_summary(refused: np.ndarray, labels: np.ndarray, task: TaskSpec) -> dict[str, Any]:
    """How many items the gate refused, overall and per true class."""
    per_class = {
        cls: {"refused": int(refused[labels == i].sum()), "n": int((labels == i).sum())}
        for i, cls in enumerate(task.classes)
        if (labels == i).any()
    }
    return {"refused": int(refused.sum()), "n": len(refused), "share": float(refused.mean()), "per_class": per_class}
