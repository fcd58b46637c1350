"""The out-of-distribution gate: does a penultimate-layer embedding look like the task's training films?

A second, model-based refusal next to the reject class (which only knows the kinds of non-task image it was
trained on). Class-conditional Gaussians with one shared covariance are fitted to the embeddings of the
clinical classes' training films (the reject class left out); an input's score is its smallest Mahalanobis
distance to a class mean. The refusal threshold is a quantile of the validation films' scores, chosen so that at
most a given share of real task films (default 1%) is refused. Numpy only: the service loads it with the bundle.

Embeddings are L2-normalised first (scale-free features separate far inputs better than raw ones), and the
shared covariance is shrunk towards a scaled identity with the Ledoit-Wolf estimate, so a few hundred training
films are enough for a 512-1024-dimensional embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from care_companion.errors import ModelError

OOD_FILE = "ood.npz"
METHOD = "mahalanobis-l2-ledoit-wolf"
DEFAULT_MAX_REFUSAL = 0.01


class OodGate(BaseModel):
    """The bundle's record of its out-of-distribution gate (``bundle.json``; the arrays are in ``ood.npz``)."""

    method: str = METHOD
    file: str = OOD_FILE
    thresholds: dict[str, float] = Field(
        description="Refusal threshold on the score per precision ('fp32', and 'int8' when the bundle has an INT8 "
        "model, chosen on that model's own validation embeddings); a score above it is refused."
    )
    max_refusal: float = Field(description="Largest share of validation task films the threshold may refuse.")
    validation_refused: dict[str, float] = Field(
        default_factory=dict, description="Share of validation task films refused at the threshold, per precision."
    )
    shrinkage: float = Field(description="Ledoit-Wolf shrinkage of the shared covariance towards identity.")
    classes: list[str] = Field(description="The clinical classes one Gaussian each was fitted to.")
    counts: dict[str, int] = Field(default_factory=dict, description="Training (fit) and validation items used.")

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

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """Smallest Mahalanobis distance ``[N]`` of each embedding to a class mean (higher: less like training)."""
        x = _normalise(embeddings)
        white = x @ self.whitening
        centres = self.means @ self.whitening
        d2 = (white**2).sum(axis=1)[:, None] - 2 * white @ centres.T + (centres**2).sum(axis=1)[None, :]
        return np.sqrt(np.maximum(d2.min(axis=1), 0.0))

    def save(self, path: Path) -> Path:
        """Write the arrays as an ``.npz`` file."""
        with open(path, "wb") as handle:
            np.savez(
                handle,
                means=self.means.astype(np.float32),
                whitening=self.whitening.astype(np.float32),
                shrinkage=np.float64(self.shrinkage),
            )
        return path

    @classmethod
    def load(cls, path: Path) -> OodModel:
        """Read arrays written by :meth:`save`."""
        try:
            with np.load(path) as data:
                return cls(
                    means=data["means"].astype(np.float64),
                    whitening=data["whitening"].astype(np.float64),
                    shrinkage=float(data["shrinkage"]),
                )
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


@dataclass(frozen=True)
class LoadedGate:
    """A bundle's gate ready to serve: its record and its fitted arrays."""

    gate: OodGate
    model: OodModel

    def refuses(self, embeddings: np.ndarray, precision: str) -> np.ndarray:
        """Which of the embeddings ``[N, D]`` an engine of ``precision`` refuses ``[N]`` (the service's rule)."""
        return self.model.score(embeddings) > self.gate.threshold_for(precision)

    def check(self, embedding: np.ndarray, precision: str) -> GateCheck:
        """The gate's verdict on one embedding ``[D]`` for an engine of ``precision``."""
        score = float(self.model.score(np.asarray(embedding)[None, :])[0])
        threshold = self.gate.threshold_for(precision)
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
    return LoadedGate(gate, OodModel.load(path))
