"""Online drift detection: a rolling window of a task's recent inputs compared with the model's reference profile.

Five families of tests, each answering one question, combined with Holm's correction so that the alarm's
false-alarm rate stays at ``alpha`` when nothing has changed:

- ``features``: do the images look different (intensity, size, edges)? Two-sample KS per feature, Holm within.
- ``embedding``: does the model see them differently? MMD with a permutation p-value on PCA-reduced embeddings.
- ``class_mix``: are the decisions distributed differently from validation? Chi-square test of homogeneity
  (validation counts vs the window's: the validation shares are estimates, not exact).
- ``confidence``: is the model less (or more) sure? Two-sample KS on the decided class's probability.
- ``rejections``: are more inputs refused as not being images of the task? One-sided Fisher exact test.

Inputs decided as the reject class (a photograph sent to the chest model) count for ``class_mix`` and
``rejections`` only; the other families compare images of the task with images of the task.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from pydantic import BaseModel, Field

from care_companion.monitoring import stats
from care_companion.monitoring.profile import ReferenceProfile
from care_companion.tasks import TaskSpec

FAMILIES = ("features", "embedding", "class_mix", "confidence", "rejections")
CONFIDENCE_BINS = 10
MAX_REFERENCE = 500  # reference rows used by the MMD test (its cost grows with the square of the rows)


@dataclass(frozen=True)
class Observation:
    """One input of the window: its images' features, the model's embedding and decision."""

    features: tuple[np.ndarray, ...]  # one feature vector per image of the input (two for a two-view study)
    histograms: tuple[np.ndarray, ...]  # the images' intensity histograms (the naive KL baseline)
    embedding: np.ndarray | None  # raw penultimate-layer embedding [D], None for models without one
    probabilities: np.ndarray  # calibrated [C]
    decided: int
    rejected: bool


class FeatureDrift(BaseModel):
    """One feature's KS test and the medians it compared."""

    name: str
    statistic: float
    p_value: float
    adjusted: float
    reference_median: float
    current_median: float


class Distribution(BaseModel):
    """Reference and current shares over named bins."""

    bins: list[str]
    reference: list[float]
    current: list[float]


class DriftStatus(BaseModel):
    """The latest drift check of one task's window (``GET /v1/monitoring/drift``)."""

    task: str
    model_version: str | None = None
    available: bool = Field(description="False when the model has no reference profile (then see 'reason').")
    reason: str | None = None
    checked_at: str
    window_size: int = Field(description="Capacity of the rolling window (inputs).")
    window_inputs: int = Field(description="Inputs in the window, rejected ones included.")
    window_images: int = Field(description="Images of the task in the window (what features/embeddings use).")
    min_images: int
    alpha: float
    drifted: bool | None = Field(default=None, description="None until enough inputs have arrived.")
    p_values: dict[str, float | None] = Field(
        default_factory=dict, description="Holm-adjusted p-value per family (None: not run yet)."
    )
    raw_p_values: dict[str, float | None] = Field(default_factory=dict)
    flagged: list[str] = Field(default_factory=list)
    features: list[FeatureDrift] = Field(default_factory=list)
    embedding_statistic: float | None = None
    class_mix: Distribution | None = None
    confidence: Distribution | None = None
    confidence_mean: dict[str, float | None] = Field(default_factory=dict)
    rejection_rate: dict[str, float | None] = Field(default_factory=dict)
    kl_baseline: float | None = Field(
        default=None, description="KL divergence of the window's pixel histogram from the reference (naive baseline)."
    )
    check_ms: float | None = None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _histogram(values: np.ndarray) -> list[float]:
    counts, _ = np.histogram(values, bins=CONFIDENCE_BINS, range=(0.0, 1.0))
    total = counts.sum()
    return [float(c / total) if total else 0.0 for c in counts]


class DriftWindow:
    """The rolling window of one task's recent inputs and its checks against the model's reference profile.

    Thread-safe: inputs are added from the event loop, checks run in a worker thread on a snapshot.

    Args:
        task: the task (classes, reject class).
        profile: the served model's reference profile, or None (drift is then reported unavailable).
        precision: the model file being run ("fp32" or "int8"): its embeddings are compared with its own.
        size: inputs kept in the window.
        min_images: inputs (and images of the task) needed before a family is tested.
        alpha: false-alarm rate of the whole verdict.
        permutations: permutations of the MMD test.
        model_version: reported with each status.
        unavailable: why there is no profile (reported when ``profile`` is None).
    """

    def __init__(
        self,
        task: TaskSpec,
        profile: ReferenceProfile | None,
        *,
        precision: str = "fp32",
        size: int = 200,
        min_images: int = 30,
        alpha: float = 0.05,
        permutations: int = 200,
        model_version: str | None = None,
        unavailable: str | None = None,
    ) -> None:
        self.task = task
        self.profile = profile
        self.size = size
        self.min_images = min_images
        self.alpha = alpha
        self.permutations = permutations
        self.model_version = model_version
        self.unavailable = unavailable or "the model has no reference profile"
        self._items: deque[Observation] = deque(maxlen=size)
        self._lock = threading.Lock()
        self._since_check = 0
        self.checks = 0
        self._reference_embeddings: np.ndarray | None = None
        if profile is not None:
            reference = profile.reference_embeddings(precision)
            if len(reference) > MAX_REFERENCE:
                pick = np.random.default_rng(0).choice(len(reference), MAX_REFERENCE, replace=False)
                reference = reference[np.sort(pick)]
            self._reference_embeddings = reference

    def __len__(self) -> int:
        return len(self._items)

    def observe(self, observation: Observation) -> int:
        """Add one input; returns how many inputs arrived since the last check."""
        with self._lock:
            self._items.append(observation)
            self._since_check += 1
            return self._since_check

    def snapshot(self) -> list[Observation]:
        """The window's inputs, oldest first."""
        with self._lock:
            return list(self._items)

    def check(self, *, seed: int | None = None) -> DriftStatus:
        """Test the window against the reference profile now."""
        started = time.perf_counter()
        items = self.snapshot()
        with self._lock:
            self._since_check = 0
            self.checks += 1
            seed = self.checks if seed is None else seed
        images = [item for item in items if not item.rejected]
        status = DriftStatus(
            task=self.task.name,
            model_version=self.model_version,
            available=self.profile is not None,
            reason=None if self.profile is not None else self.unavailable,
            checked_at=_now(),
            window_size=self.size,
            window_inputs=len(items),
            window_images=sum(len(item.features) for item in images),
            min_images=self.min_images,
            alpha=self.alpha,
        )
        if self.profile is None:
            return status
        raw: dict[str, float | None] = dict.fromkeys(FAMILIES)
        self._features(status, raw, images)
        self._embedding(status, raw, images, seed)
        self._decisions(status, raw, items, images)
        verdict = stats.drift_verdict(raw, alpha=self.alpha)
        status.raw_p_values = raw
        status.p_values = {name: verdict.adjusted.get(name) for name in FAMILIES}
        status.flagged = list(verdict.flagged)
        status.drifted = verdict.drifted if len(verdict.skipped) < len(FAMILIES) else None
        status.check_ms = round((time.perf_counter() - started) * 1000, 2)
        return status

    def _features(self, status: DriftStatus, raw: dict[str, float | None], images: Sequence[Observation]) -> None:
        assert self.profile is not None
        rows = [vector for item in images for vector in item.features]
        if len(rows) < self.min_images:
            return
        current = np.stack(rows)
        result = stats.ks_features(self.profile.features, current, self.profile.feature_names)
        raw["features"] = result.p_value
        window_histogram = np.mean([h for item in images for h in item.histograms], axis=0)
        status.kl_baseline = stats.kl_divergence(self.profile.histogram, window_histogram)
        reference_median = np.median(self.profile.features, axis=0)
        current_median = np.median(current, axis=0)
        status.features = [
            FeatureDrift(
                name=f.name,
                statistic=f.statistic,
                p_value=f.p_value,
                adjusted=f.adjusted,
                reference_median=float(reference_median[k]),
                current_median=float(current_median[k]),
            )
            for k, f in enumerate(result.features)
        ]

    def _embedding(
        self, status: DriftStatus, raw: dict[str, float | None], images: Sequence[Observation], seed: int
    ) -> None:
        assert self.profile is not None
        vectors = [item.embedding for item in images if item.embedding is not None]
        if len(vectors) < self.min_images or self._reference_embeddings is None:
            return
        current = self.profile.project(np.stack(vectors))
        result = stats.mmd_test(self._reference_embeddings, current, permutations=self.permutations, seed=seed)
        raw["embedding"] = result.p_value
        status.embedding_statistic = result.statistic

    def _decisions(
        self,
        status: DriftStatus,
        raw: dict[str, float | None],
        items: Sequence[Observation],
        images: Sequence[Observation],
    ) -> None:
        assert self.profile is not None
        classes = self.profile.classes
        counts = np.bincount([item.decided for item in items], minlength=len(classes)).astype(np.int64)
        total = len(items)
        current_mix = counts / total if total else np.zeros(len(classes))
        status.class_mix = Distribution(
            bins=list(classes), reference=[float(v) for v in self.profile.class_mix], current=list(current_mix)
        )
        confidences = np.array([item.probabilities[item.decided] for item in images])
        status.confidence = Distribution(
            bins=[f"{k / CONFIDENCE_BINS:.1f}-{(k + 1) / CONFIDENCE_BINS:.1f}" for k in range(CONFIDENCE_BINS)],
            reference=_histogram(self.profile.confidences),
            current=_histogram(confidences),
        )
        status.confidence_mean = {
            "reference": float(self.profile.confidences.mean()) if len(self.profile.confidences) else None,
            "current": float(confidences.mean()) if len(confidences) else None,
        }
        rejected = int(sum(item.rejected for item in items))
        status.rejection_rate = {
            "reference": self.profile.rejection_rate,
            "current": rejected / total if total else None,
        }
        if total >= self.min_images:
            # the reference's mix and rejection rate are estimates from its validation items: two-sample tests
            n_ref = int(self.profile.counts.get("validation_items") or len(self.profile.confidences))
            reference = np.rint(np.asarray(self.profile.class_mix, float) * n_ref).astype(np.int64)
            raw["class_mix"] = stats.class_mix_two_sample(reference, counts).p_value
            if self.task.reject is not None:
                ref_rejected = round(self.profile.rejection_rate * n_ref)
                raw["rejections"] = stats.rejection_two_sample(ref_rejected, n_ref, rejected, total).p_value
        if len(confidences) >= self.min_images and len(self.profile.confidences) >= 2:
            raw["confidence"] = stats.confidence_shift(self.profile.confidences, confidences).p_value
