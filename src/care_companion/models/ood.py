"""The out-of-distribution gate: does an input, and each of its views, look like the task's training films?

A second, model-based refusal next to the reject class (which only knows the kinds of non-task image it was
trained on). Its parts are Gaussians fitted to the clinical classes' training films (one per class, a shared
Ledoit-Wolf-shrunk covariance, L2-normalised features, the reject class left out); a part's score is an input's
smallest Mahalanobis distance to a class mean. The parts:

* each view's pooled backbone features (for a one-view model that is its penultimate embedding; a multi-view
  model exports them as the ``view_embeddings`` output), so a chest film sent as the lateral view of a wrist
  study is refused however ordinary its PA view looks;
* for a multi-view model also its fused study embedding (the penultimate layer). Each part catches what the
  other misses: on the demo wrist model (no reject class) the fused embedding let 49 of 100 real chest films
  sent as the PA view through and the per-view parts none; on a FracAtlas wrist model trained with a reject
  class the fused embedding let 1% of chest films and 32% of hip/shoulder films through, the per-view parts 16%
  and 88%, and both together 1% and 31%.

Each part's score is divided by its validation median (so 1.0 is a typical real film for every part), and an
input's score is the largest over its parts and present views. The refusal threshold is one quantile of the
validation studies' scores, chosen so that at most a given share (default 1%) of each clinical class's real task
studies the reject class accepts is refused (studies it refuses anyway do not set the threshold; a rare class is
not left to the common ones). The share is set once, for the
worst part, not per part: per-part quantiles add up (see :func:`care_companion.workflows.ood_gate.fit_part`). An
INT8 model gets Gaussians and a threshold of its own: its features are shifted enough from the float32 model's
that scoring them against the float32 Gaussians doubled the typical score of real films and let a chest film
through a wrist gate. Numpy only: the service loads it with the bundle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from care_companion.errors import ModelError

OOD_FILE = "ood.npz"
METHOD = "mahalanobis-l2-ledoit-wolf-per-view-median-scaled"
DEFAULT_MAX_REFUSAL = 0.01


class OodGate(BaseModel):
    """The bundle's record of its out-of-distribution gate (``bundle.json``; the arrays are in ``ood.npz``)."""

    method: str = METHOD
    file: str = OOD_FILE
    thresholds: dict[str, float] = Field(
        description="Refusal threshold on the score per precision ('fp32', and 'int8' when the bundle has an INT8 "
        "model, with Gaussians fitted to its own features); a score above it is refused."
    )
    max_refusal: float = Field(
        description="Largest share of validation task films the threshold may refuse (of those the reject class "
        "accepts: films it refuses anyway do not set the threshold)."
    )
    validation_refused: dict[str, float] = Field(
        default_factory=dict,
        description="Share of the validation task films the reject class accepts refused at the threshold, per "
        "precision.",
    )
    shrinkage: float = Field(
        description="Ledoit-Wolf shrinkage of the shared covariance towards identity (the largest over views)."
    )
    classes: list[str] = Field(description="The clinical classes one Gaussian each was fitted to.")
    counts: dict[str, int] = Field(default_factory=dict, description="Training (fit) and validation items used.")
    views: list[str] = Field(
        default_factory=list,
        description="The views scored one by one, in the order of their features; empty for a gate on the "
        "model's embedding alone (bundles made before the per-view gate).",
    )
    study: bool = Field(
        default=False,
        description="The fused study embedding is a part too (multi-view models); its model comes first.",
    )

    def threshold_for(self, precision: str) -> float:
        """The threshold of the engine's precision (the float32 one where the INT8 model has none)."""
        return self.thresholds.get(precision, self.thresholds["fp32"])


def _normalise(embeddings: np.ndarray) -> np.ndarray:
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {x.shape}")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def ledoit_wolf(centred: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf shrunk covariance of already centred rows ``[N, D]`` and its shrinkage in [0, 1]
    (the estimate of Ledoit and Wolf 2004, as scikit-learn computes it)."""
    n, p = centred.shape
    if n < 2:
        raise ValueError("need at least two items to estimate a covariance")
    emp = centred.T @ centred / n
    mu = float(np.trace(emp)) / p
    squared = centred**2
    beta_ = float(np.sum(squared.T @ squared)) / n
    delta_ = float(np.sum(emp**2))
    beta = (beta_ - delta_) / (p * n)
    delta = (delta_ - 2 * mu * float(np.trace(emp)) + p * mu**2) / p
    beta = min(beta, delta)
    shrinkage = 0.0 if delta == 0 else beta / delta
    covariance = (1 - shrinkage) * emp
    covariance.flat[:: p + 1] += shrinkage * mu
    return covariance, float(shrinkage)


@dataclass(frozen=True)
class OodModel:
    """Fitted class means and whitening of the shared covariance; :meth:`score` gives Mahalanobis distances."""

    means: np.ndarray  # [C, D] class means of the L2-normalised embeddings
    whitening: np.ndarray  # [D, D]: ||(x - m) @ whitening|| is the Mahalanobis distance
    shrinkage: float
    scale: float = 1.0  # scores are distances divided by this (the part's validation median)

    @classmethod
    def fit(cls, embeddings: np.ndarray, labels: np.ndarray) -> OodModel:
        """Fit one Gaussian per label value (a shared, shrunk covariance) to training embeddings ``[N, D]``."""
        x = _normalise(embeddings)
        labels = np.asarray(labels)
        if len(x) != len(labels):
            raise ValueError("one label per embedding")
        values = np.unique(labels)
        means = np.stack([x[labels == v].mean(axis=0) for v in values])
        centred = x - means[np.searchsorted(values, labels)]
        covariance, shrinkage = ledoit_wolf(centred)
        eigenvalues, vectors = np.linalg.eigh(covariance)
        eigenvalues = np.maximum(eigenvalues, eigenvalues.max() * 1e-9)
        return cls(means=means, whitening=vectors / np.sqrt(eigenvalues), shrinkage=shrinkage)

    def scaled(self, scale: float) -> OodModel:
        """The same Gaussians with scores divided by ``scale``."""
        return OodModel(self.means, self.whitening, self.shrinkage, float(scale))

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """Smallest Mahalanobis distance ``[N]`` of each embedding to a class mean, divided by :attr:`scale`
        (higher: less like training)."""
        x = _normalise(embeddings)
        white = x @ self.whitening
        centres = self.means @ self.whitening
        d2 = (white**2).sum(axis=1)[:, None] - 2 * white @ centres.T + (centres**2).sum(axis=1)[None, :]
        return np.sqrt(np.maximum(d2.min(axis=1), 0.0)) / self.scale

    def arrays(self, suffix: str = "") -> dict[str, np.ndarray]:
        """The model as named arrays (names end in ``suffix``)."""
        return {
            f"means{suffix}": self.means.astype(np.float32),
            f"whitening{suffix}": self.whitening.astype(np.float32),
            f"shrinkage{suffix}": np.asarray(self.shrinkage, dtype=np.float64),
            f"scale{suffix}": np.asarray(self.scale, dtype=np.float64),
        }

    @classmethod
    def from_arrays(cls, data: Mapping[str, np.ndarray], suffix: str = "") -> OodModel:
        """The model from :meth:`arrays` (a missing scale is 1: gates made before views were scaled)."""
        scale = data.get(f"scale{suffix}")
        return cls(
            means=np.asarray(data[f"means{suffix}"], dtype=np.float64),
            whitening=np.asarray(data[f"whitening{suffix}"], dtype=np.float64),
            shrinkage=float(data[f"shrinkage{suffix}"]),
            scale=1.0 if scale is None else float(scale),
        )

    def save(self, path: Path) -> Path:
        """Write the arrays as an ``.npz`` file."""
        with open(path, "wb") as handle:
            np.savez(handle, **self.arrays())  # type: ignore[arg-type]
        return path

    @classmethod
    def load(cls, path: Path) -> OodModel:
        """Read a file written by :meth:`save`."""
        return load_models(path)["fp32"][0]


GateModels = dict[str, list[OodModel]]  # per precision ('fp32', 'int8'), one model per view


def save_models(models: GateModels, path: Path) -> Path:
    """Write a gate's models as an ``.npz`` file (arrays suffixed ``_<precision>_<view index>``)."""
    arrays: dict[str, np.ndarray] = {}
    for precision, views in models.items():
        arrays[f"count_{precision}"] = np.asarray(len(views), dtype=np.int64)
        for i, model in enumerate(views):
            arrays |= model.arrays(f"_{precision}_{i}")
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]
    return path


def load_models(path: Path) -> GateModels:
    """Read the models written by :func:`save_models` (or by :meth:`OodModel.save`: one float32 model, as gates
    made before views were scored one by one)."""
    try:
        with np.load(path) as file:
            data = {name: file[name] for name in file.files}
        counts = {name.removeprefix("count_"): int(value) for name, value in data.items() if name.startswith("count_")}
        if not counts:
            return {"fp32": [OodModel.from_arrays(data)]}
        return {p: [OodModel.from_arrays(data, f"_{p}_{i}") for i in range(n)] for p, n in counts.items()}
    except (OSError, KeyError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable out-of-distribution gate: {exc}") from exc


def choose_threshold(scores: np.ndarray, max_refusal: float = DEFAULT_MAX_REFUSAL) -> tuple[float, float]:
    """The smallest threshold refusing (score above it) at most ``max_refusal`` of ``scores``, and the share it
    refuses. With fewer than ``1 / max_refusal`` scores that is the largest score: none is refused."""
    values = np.sort(np.asarray(scores, dtype=np.float64))
    if not len(values):
        raise ValueError("no validation scores to choose a threshold on")
    allowed = int(np.floor(max_refusal * len(values) + 1e-9))
    threshold = float(values[len(values) - 1 - allowed])
    return threshold, float((values > threshold).mean())


def study_scores(models: list[OodModel], features: np.ndarray, present: np.ndarray | None = None) -> np.ndarray:
    """Each study's score ``[N]``: the largest over its present views of the view's score.

    Args:
        models: one fitted model per view, in view order.
        features: the views' features ``[N, V, F]``; with one model also an embedding ``[N, D]``.
        present: ``[N, V]`` 1 where a view was given (None: all views given).
    """
    x = np.asarray(features)
    if x.ndim == 2 and len(models) == 1:
        return models[0].score(x)
    if x.ndim != 3 or x.shape[1] != len(models):
        raise ValueError(f"view features must be [N, {len(models)}, F], got shape {x.shape}")
    scores = np.stack([m.score(x[:, v]) for v, m in enumerate(models)], axis=1)
    given = np.ones(scores.shape, dtype=bool) if present is None else np.asarray(present).reshape(scores.shape) > 0.5
    return np.where(given, scores, -np.inf).max(axis=1)


def gate_scores(
    models: list[OodModel],
    embeddings: np.ndarray,
    view_features: np.ndarray,
    present: np.ndarray | None,
    *,
    study: bool,
) -> np.ndarray:
    """Scores ``[N]``: the worst of the study part (``models[0]`` on the embeddings, when ``study``) and the
    view parts (the other models, see :func:`study_scores`)."""
    views = study_scores(models[1:] if study else models, view_features, present)
    return np.maximum(views, models[0].score(embeddings)) if study else views


@dataclass(frozen=True)
class LoadedGate:
    """A bundle's gate ready to serve: its record and its fitted arrays (per precision: the study model first
    when ``gate.study``, then one model per view)."""

    gate: OodGate
    models: GateModels

    def models_for(self, precision: str) -> list[OodModel]:
        """The models of an engine of ``precision`` (the float32 ones where it has none of its own)."""
        return self.models.get(precision, self.models["fp32"])

    def scores(
        self, embeddings: np.ndarray, view_features: np.ndarray, present: np.ndarray | None, precision: str
    ) -> np.ndarray:
        """Scores ``[N]`` of an engine of ``precision``'s outputs: embeddings ``[N, D]``, view features
        ``[N, V, F]`` (a one-view model's embeddings do for both) and view mask ``present`` ``[N, V]``."""
        models = self.models_for(precision)
        if not self.gate.views:  # a gate made before views were scored: the embedding alone
            return models[0].score(embeddings)
        return gate_scores(models, embeddings, view_features, present, study=self.gate.study)

    def refuses(
        self, embeddings: np.ndarray, view_features: np.ndarray, present: np.ndarray | None, precision: str
    ) -> np.ndarray:
        """Which inputs an engine of ``precision`` refuses ``[N]`` (the service's rule)."""
        return self.scores(embeddings, view_features, present, precision) > self.gate.threshold_for(precision)

    def check(
        self, embedding: np.ndarray, view_features: np.ndarray, present: np.ndarray | None, precision: str
    ) -> GateCheck:
        """The gate's verdict on one input's embedding ``[D]`` and view features ``[V, F]`` (views given ``[V]``)."""
        mask = None if present is None else np.asarray(present)[None, :]
        one = self.scores(np.asarray(embedding)[None, :], np.asarray(view_features)[None, :], mask, precision)
        score, threshold = float(one[0]), self.gate.threshold_for(precision)
        return GateCheck(refused=score > threshold, score=score, threshold=threshold)


@dataclass(frozen=True)
class GateCheck:
    """The gate's verdict on one input: refused when its score is above the threshold."""

    refused: bool
    score: float
    threshold: float


def load_gate(directory: Path, gate: OodGate | None) -> LoadedGate | None:
    """The gate of the bundle in ``directory`` (None for a bundle made without one)."""
    if gate is None:
        return None
    path = Path(directory) / gate.file
    if not path.is_file():
        raise ModelError(f"{directory}: bundle.json names an out-of-distribution gate but {gate.file} is missing")
    return LoadedGate(gate, load_models(path))
