"""Build a bundle's out-of-distribution gate (see :mod:`care_companion.models.ood`) from its exported ONNX model.

Run at training time after the bundle (and its INT8 model) is written: the Gaussians are fitted to the float32
model's embeddings of the training split's clinical films, the threshold is chosen on the validation split's
clinical films, and an INT8 model gets its own threshold from its own validation embeddings (scored against the
same Gaussians), so whichever precision is served refuses at most the chosen share of real films.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from care_companion.data.datasets import ArrayData
from care_companion.models.bundle import INT8_FILE, load_meta, save_meta
from care_companion.models.ood import DEFAULT_MAX_REFUSAL, OOD_FILE, OodGate, OodModel, choose_threshold, load_gate
from care_companion.models.predictor import BundlePredictor, Feed, softmax
from care_companion.tasks import TaskSpec
from care_companion.workflows.scoring import model_feed

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


def embeddings_of(predictor: BundlePredictor, data: ArrayData, index: np.ndarray) -> np.ndarray:
    """Penultimate-layer embeddings ``[N, D]`` of the items at ``index``."""
    _, embeddings = predictor.logits_and_embeddings(model_feed(predictor, data, index))
    return embeddings


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
        val: validation items; the clinical ones choose the threshold.
        max_refusal: largest share of validation task films the threshold may refuse.
        max_items: training items sampled for the fit.
        seed: sampling seed.
    """
    fp32 = BundlePredictor(bundle_dir, precision="fp32")
    fit_on = clinical_index(train, task, max_items=max_items, seed=seed)
    held = clinical_index(val, task)
    if len(fit_on) < 2 or not len(held):
        raise ValueError(f"too few clinical items for the gate ({len(fit_on)} training, {len(held)} validation)")
    model = OodModel.fit(embeddings_of(fp32, train, fit_on), train.labels[fit_on])
    thresholds, refused = {}, {}
    thresholds["fp32"], refused["fp32"] = choose_threshold(model.score(embeddings_of(fp32, val, held)), max_refusal)
    meta = load_meta(bundle_dir)
    if meta.int8 is not None and (bundle_dir / (meta.int8.file or INT8_FILE)).is_file():
        int8 = BundlePredictor(bundle_dir, precision="int8")
        thresholds["int8"], refused["int8"] = choose_threshold(model.score(embeddings_of(int8, val, held)), max_refusal)
    model.save(bundle_dir / OOD_FILE)
    gate = OodGate(
        thresholds=thresholds,
        max_refusal=max_refusal,
        validation_refused=refused,
        shrinkage=model.shrinkage,
        classes=[task.classes[int(c)] for c in np.unique(train.labels[fit_on])],
        counts={"fit_items": len(fit_on), "validation_items": len(held)},
    )
    meta.ood = gate
    save_meta(bundle_dir, meta)
    log.info(
        "out-of-distribution gate: fitted on %d training items, threshold %s refuses %s of %d validation films",
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
    logits, embeddings = predictor.logits_and_embeddings(feed)
    refused = gate.refuses(embeddings, predictor.precision)
    return softmax(logits, predictor.temperature), refused


def gate_summary(refused: np.ndarray, labels: np.ndarray, task: TaskSpec) -> dict[str, Any]:
    """How many items the gate refused, overall and per true class."""
    per_class = {
        cls: {"refused": int(refused[labels == i].sum()), "n": int((labels == i).sum())}
        for i, cls in enumerate(task.classes)
        if (labels == i).any()
    }
    return {"refused": int(refused.sum()), "n": len(refused), "share": float(refused.mean()), "per_class": per_class}
