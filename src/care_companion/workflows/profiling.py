"""Compute a model bundle's reference profile for drift monitoring (see :mod:`care_companion.monitoring.profile`).

Run at training time, after the bundle (and its INT8 model) is written; ``care-companion drift profile`` runs it
for a bundle trained before drift monitoring existed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from care_companion.data.cache import load_stored_image
from care_companion.data.datasets import ArrayData
from care_companion.data.manifest import Manifest
from care_companion.models.bundle import INT8_FILE, PROFILE_FILE, load_meta
from care_companion.models.ood import load_gate
from care_companion.models.predictor import BundlePredictor
from care_companion.monitoring.features import FEATURE_NAMES, HISTOGRAM_BINS, describe
from care_companion.monitoring.profile import ReferenceProfile, decided_confidences, fit_pca, pca_project
from care_companion.progress import progress_bar
from care_companion.storage import ObjectStore
from care_companion.tasks import TaskSpec
from care_companion.workflows.scoring import model_feed, score_feed

log = logging.getLogger(__name__)

PCA_COMPONENTS = 16


def training_images(
    store: ObjectStore, manifest: Manifest, task: TaskSpec, *, max_images: int, seed: int
) -> list[np.ndarray]:
    """Up to ``max_images`` random training images of the task (the reject class left out), as stored: the size
    and processing the service sees in uploads."""
    frame = manifest.frame
    keep = (frame["split"] == "train") & (frame["label"] != (task.reject or "\0"))
    keys = frame.loc[keep, "key"].tolist()
    if len(keys) > max_images:
        pick = np.sort(np.random.default_rng(seed).choice(len(keys), max_images, replace=False))
        keys = [keys[i] for i in pick]
    with progress_bar() as bar:
        return [load_stored_image(store, key) for key in bar.track(keys, description="reference profile: images")]


def image_features(images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Features [N, F] of ``images`` and their mean intensity histogram [B]."""
    features = np.zeros((len(images), len(FEATURE_NAMES)))
    histograms = np.zeros((len(images), HISTOGRAM_BINS))
    for i, image in enumerate(images):
        features[i], histograms[i] = describe(image)
    return features, histograms.mean(axis=0) if images else np.full(HISTOGRAM_BINS, 1 / HISTOGRAM_BINS)


def _sample(data: ArrayData, task: TaskSpec, max_items: int, seed: int) -> np.ndarray:
    """Indices of up to ``max_items`` random items of ``data`` that are not of the reject class."""
    index = np.arange(len(data))
    if task.reject is not None:
        index = index[data.labels != task.index(task.reject)]
    if len(index) > max_items:
        index = np.sort(np.random.default_rng(seed).choice(index, max_items, replace=False))
    return index


def build_profile(
    bundle_dir: Path,
    task: TaskSpec,
    *,
    store: ObjectStore,
    manifest: Manifest,
    train: ArrayData,
    val: ArrayData,
    max_images: int = 1000,
    seed: int = 0,
) -> ReferenceProfile:
    """The reference profile of the bundle in ``bundle_dir`` trained on ``manifest``'s data set, written into the
    bundle as ``reference_profile.npz`` (see :func:`profile_from_arrays`; the features come from up to
    ``max_images`` stored training images)."""
    images = training_images(store, manifest, task, max_images=max_images, seed=seed)
    return profile_from_arrays(bundle_dir, task, images=images, train=train, val=val, max_images=max_images, seed=seed)


def profile_from_arrays(
    bundle_dir: Path,
    task: TaskSpec,
    *,
    images: list[np.ndarray],
    train: ArrayData,
    val: ArrayData,
    max_images: int = 1000,
    seed: int = 0,
) -> ReferenceProfile:
    """The reference profile of the bundle in ``bundle_dir``, written into it as ``reference_profile.npz``.

    Args:
        bundle_dir: the exported bundle (its float32 model, and its INT8 model when present, are run).
        task: the bundle's task.
        images: training images of the task at their original size (uint8 grayscale), for the features.
        train: training items (model inputs at the bundle's size), for the PCA.
        val: validation items: the reference embeddings, class mix, confidences and rejection rate.
        max_images: training items sampled for the PCA.
        seed: sampling seed.
    """
    features, histogram = image_features(images)
    fp32 = BundlePredictor(bundle_dir, precision="fp32")
    fit_on = _sample(train, task, max_images, seed)
    _, train_embeddings = fp32.logits_and_embeddings(model_feed(fp32, train, fit_on))
    mean, components, explained = fit_pca(train_embeddings, PCA_COMPONENTS)

    reject = task.index(task.reject) if task.reject is not None else -1
    scores = score_feed(fp32, model_feed(fp32, val), task)  # the model has embeddings: the PCA needed them
    decided, probs = scores.decided, scores.probabilities
    assert scores.embeddings is not None
    meta = load_meta(bundle_dir)
    gate = load_gate(bundle_dir, meta.ood)  # built before the profile: its refusals are rejections, as served
    refused = scores.gate_refuses(gate, "fp32")
    kept = (decided != reject) & ~refused
    projected = {"fp32": pca_project(scores.embeddings[kept], mean, components)}
    if meta.int8 is not None and (bundle_dir / (meta.int8.file or INT8_FILE)).is_file():
        engine = BundlePredictor(bundle_dir, precision="int8")
        int8 = score_feed(engine, model_feed(engine, val), task)
        assert int8.embeddings is not None
        projected["int8"] = pca_project(int8.embeddings[int8.decided != reject], mean, components)

    profile = ReferenceProfile(
        task=task.name,
        classes=list(task.classes),
        feature_names=list(FEATURE_NAMES),
        features=features,
        histogram=histogram,
        pca_mean=mean,
        pca_components=components,
        pca_explained=explained,
        embeddings=projected,
        class_mix=np.bincount(decided, minlength=len(task.classes)) / max(len(decided), 1),
        confidences=decided_confidences(probs, decided)[kept],
        rejection_rate=float((~kept).mean()) if len(kept) else 0.0,
        counts={
            "feature_images": len(features),
            "pca_items": len(fit_on),
            "validation_items": len(decided),
            "validation_kept": int(kept.sum()),
        },
    )
    profile.save(bundle_dir / PROFILE_FILE)
    log.info(
        "reference profile: %d training images, PCA of %d items (%d components, %.0f%% of variance), %d validation",
        len(features),
        len(fit_on),
        len(components),
        100 * float(explained.sum()),
        len(decided),
    )
    return profile
