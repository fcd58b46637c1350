"""The evaluation JSON: metrics at the stored operating point, with 95% bootstrap intervals and subgroups.

Decisions come from :func:`care_companion.evaluation.decision.decide`. Abnormal metrics (any disease class
vs the negative class) are computed over images whose true class is not the reject class; an image decided
as the reject class counts as not flagged (a missed disease). Per-class metrics are one-vs-rest over all
images: specificity, precision and F1 on the decided labels, AUC on the class probability. Sensitivity of a
disease class counts its films flagged abnormal (detected, whichever disease the label names: the film goes
to the radiologist as abnormal); ``label_sensitivity`` is the stricter share labelled with that very disease.
For the other classes both are the share of their films given their own label.
Undefined metrics (e.g. a class absent from the data) are ``None`` (``null`` in JSON).

Intervals are 95% percentile bootstrap intervals: images are resampled with replacement ``n_boot`` times
(seeded); resamples where a metric is undefined are skipped for that metric. Every resample is a row of
per-image counts, so all metrics of a batch of resamples are computed with a few matrix operations.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from pydantic import BaseModel, Field

from care_companion.evaluation.decision import decide, p_abnormal, resolve_thresholds
from care_companion.tasks import TaskSpec

ECE_BINS = 15
CONFIDENCE = 0.95
_BOOT_CELLS = 2_000_000  # resamples x images per batch: bounds bootstrap memory to a few tens of MB


class ClassMetrics(BaseModel):
    """One-vs-rest metrics of one class."""

    n: int = Field(description="Images whose true class is this class.")
    sensitivity: float | None = Field(default=None, description="Disease classes: share flagged abnormal.")
    label_sensitivity: float | None = Field(default=None, description="Share given exactly this class's label.")
    specificity: float | None = None
    precision: float | None = None
    f1: float | None = None
    auc: float | None = None


class GroupSummary(BaseModel):
    """Point metrics of one subgroup (e.g. one source); no intervals."""

    n: int
    n_per_class: dict[str, int]
    auc_abnormal: float | None = None
    sensitivity_abnormal: float | None = None
    specificity_abnormal: float | None = None
    sensitivity: dict[str, float | None] = Field(description="Per-class sensitivity.")


class EvaluationReport(BaseModel):
    """Evaluation of calibrated probabilities at an operating point (serialises to the evaluation JSON)."""

    task: str
    n: int
    classes: list[str]
    positives: list[str]
    negative: str
    reject: str | None = None
    n_per_class: dict[str, int]
    thresholds: dict[str, float] = Field(description="Thresholds used, defaults filled in.")
    auc_abnormal: float | None = None
    sensitivity_abnormal: float | None = None
    specificity_abnormal: float | None = None
    sensitivity: float | None = Field(
        default=None,
        description="Sensitivity for disease (any disease class) at the operating point: for wrist, the fracture "
        "class; the same as sensitivity_abnormal.",
    )
    specificity: float | None = Field(default=None, description="Specificity at the operating point (as above).")
    auc: float | None = Field(default=None, description="AUC of P(disease) (as above).")
    n_abnormal: int = Field(description="Images with a disease class as true class.")
    n_not_abnormal: int = Field(description="Images with a true class that is neither disease nor reject.")
    per_class: dict[str, ClassMetrics]
    intervals: dict[str, list[float] | None] = Field(
        description="95% percentile bootstrap [low, high] per metric; null when undefined in every resample."
    )
    confidence_level: float = CONFIDENCE
    n_boot: int
    seed: int
    confusion_matrix: list[list[int]] = Field(description="Rows: true class; columns: decided class.")
    confusion_labels: list[str]
    ece: float | None = None
    reject_rate_xray: float | None = Field(default=None, description="True non-reject images decided as reject.")
    reject_recall: float | None = Field(default=None, description="True reject-class images decided as reject.")
    by_group: dict[str, dict[str, GroupSummary]] = Field(default_factory=dict)


class ReliabilityBins(BaseModel):
    """Top-class confidence in equal-width bins: what the reliability diagram and the ECE are made of."""

    edges: list[float]
    count: list[int]
    confidence: list[float | None] = Field(description="Mean confidence per bin; None when empty.")
    accuracy: list[float | None] = Field(description="Accuracy per bin; None when empty.")
    ece: float | None = None


def reliability_bins(y_true: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> ReliabilityBins:
    """Bins ``(k/n_bins, (k+1)/n_bins]`` of the top-class confidence and ``ECE = sum_b n_b/N |acc_b - conf_b|``."""
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true).astype(np.int64).reshape(-1)
    conf = probs.max(axis=1) if probs.size else np.zeros(0)
    correct = (probs.argmax(axis=1) == y).astype(np.float64) if probs.size else np.zeros(0)
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    conf_sum = np.bincount(bins, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(bins, weights=correct, minlength=n_bins)
    return ReliabilityBins(
        edges=np.linspace(0.0, 1.0, n_bins + 1).tolist(),
        count=count.tolist(),
        confidence=[float(s / c) if c else None for s, c in zip(conf_sum, count, strict=True)],
        accuracy=[float(s / c) if c else None for s, c in zip(acc_sum, count, strict=True)],
        ece=float(np.abs(acc_sum - conf_sum).sum() / y.size) if y.size else None,
    )


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE of the top-class confidence over equal-width bins; NaN for empty input."""
    ece = reliability_bins(y_true, probs, n_bins).ece
    return float("nan") if ece is None else ece


# ---------------------------------------------------------------- weighted metrics (one row per resample)


def _rate(weights: np.ndarray, hit: np.ndarray, condition: np.ndarray) -> np.ndarray:
    """Weighted ``P(hit | condition)`` per row of ``weights`` [B, N]; NaN where the condition is empty."""
    den = weights @ condition.astype(np.float64)
    num = weights @ (condition & hit).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _auc(weights: np.ndarray, score: np.ndarray, positive: np.ndarray, population: np.ndarray) -> np.ndarray:
    """Weighted ROC AUC (Mann-Whitney, ties count one half) per row; NaN without both positives and negatives."""
    idx = np.flatnonzero(population)
    if not idx.size:
        return np.full(weights.shape[0], np.nan)
    order = idx[np.argsort(score[idx], kind="mergesort")]
    sorted_score = score[order]
    starts = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])
    w = weights[:, order]
    is_pos = positive[order].astype(np.float64)
    w_pos = np.add.reduceat(w * is_pos, starts, axis=1)
    w_neg = np.add.reduceat(w * (1.0 - is_pos), starts, axis=1)
    below = np.cumsum(w_neg, axis=1) - w_neg
    num = (w_pos * (below + 0.5 * w_neg)).sum(axis=1)
    den = w_pos.sum(axis=1) * w_neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


class _Scored:
    """Per-image arrays every metric is computed from."""

    def __init__(self, y: np.ndarray, probs: np.ndarray, decided: np.ndarray, task: TaskSpec) -> None:
        self.task = task
        self.y = y
        self.probs = probs
        self.decided = decided
        pos = np.asarray(task.positive_indices, dtype=np.int64)
        self.clinical = np.ones(y.size, dtype=bool) if task.reject is None else y != task.index(task.reject)
        self.abnormal_true = np.isin(y, pos)
        self.flagged = np.isin(decided, pos)
        self.p_abnormal = p_abnormal(probs, task)

    def subset(self, idx: np.ndarray) -> _Scored:
        return _Scored(self.y[idx], self.probs[idx], self.decided[idx], self.task)

    def table(self, weights: np.ndarray, *, per_class_extra: bool = True) -> dict[str, np.ndarray]:
        """Metric name -> value per row of ``weights`` [B, N] (a row of ones gives the point estimate)."""
        clinical = self.clinical
        out = {
            "auc_abnormal": _auc(weights, self.p_abnormal, self.abnormal_true, clinical),
            "sensitivity_abnormal": _rate(weights, self.flagged, clinical & self.abnormal_true),
            "specificity_abnormal": _rate(weights, ~self.flagged, clinical & ~self.abnormal_true),
        }
        every = np.ones(self.y.size, dtype=bool)
        for c, name in enumerate(self.task.classes):
            true_c, decided_c = self.y == c, self.decided == c
            # a disease film is detected when flagged abnormal, whichever disease its label names
            detected = self.flagged if c in self.task.positive_indices else decided_c
            out[f"{name}_sensitivity"] = _rate(weights, detected, true_c)
            if per_class_extra:
                out[f"{name}_label_sensitivity"] = _rate(weights, decided_c, true_c)
            if per_class_extra:
                out[f"{name}_specificity"] = _rate(weights, ~decided_c, ~true_c)
                out[f"{name}_auc"] = _auc(weights, self.probs[:, c], true_c, every)
        return out


def _value(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 else None


def _bootstrap(scored: _Scored, n_boot: int, seed: int) -> dict[str, list[float] | None]:
    n = scored.y.size
    rng = np.random.default_rng(seed)
    batch = max(1, _BOOT_CELLS // max(n, 1))
    parts: dict[str, list[np.ndarray]] = {}
    done = 0
    while done < n_boot:
        b = min(batch, n_boot - done)
        draws = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
        weights = np.bincount(draws.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
        for key, values in scored.table(weights).items():
            parts.setdefault(key, []).append(values)
        done += b
    alpha = (1.0 - CONFIDENCE) / 2.0 * 100.0
    intervals: dict[str, list[float] | None] = {}
    for key, chunks in parts.items():
        values = np.concatenate(chunks)
        values = values[np.isfinite(values)]
        intervals[key] = np.percentile(values, [alpha, 100.0 - alpha]).tolist() if values.size else None
    return intervals


def _group_summary(scored: _Scored) -> GroupSummary:
    point = {k: _value(v[0]) for k, v in scored.table(np.ones((1, scored.y.size)), per_class_extra=False).items()}
    counts = np.bincount(scored.y, minlength=len(scored.task.classes))
    return GroupSummary(
        n=int(scored.y.size),
        n_per_class={name: int(counts[c]) for c, name in enumerate(scored.task.classes)},
        auc_abnormal=point["auc_abnormal"],
        sensitivity_abnormal=point["sensitivity_abnormal"],
        specificity_abnormal=point["specificity_abnormal"],
        sensitivity={name: point[f"{name}_sensitivity"] for name in scored.task.classes},
    )


def evaluate_predictions(
    y_true: np.ndarray,
    probs: np.ndarray,
    task: TaskSpec,
    thresholds: Mapping[str, float],
    *,
    groups: Mapping[str, np.ndarray] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> EvaluationReport:
    """Evaluate calibrated probabilities ``probs`` [N, C] against true class indices ``y_true`` [N].

    Args:
        y_true: true class indices into ``task.classes`` (any subset of the classes may be present).
        probs: calibrated probabilities over all of ``task.classes``.
        task: the clinical task.
        thresholds: the operating point (missing keys default to 0.5).
        groups: name -> per-image group values (e.g. ``{"source": ...}``) for per-group point metrics.
        n_boot: bootstrap resamples for the 95% intervals (0 disables them).
        seed: seed of the bootstrap.
    """
    n_classes = len(task.classes)
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true).astype(np.int64).reshape(-1)
    if probs.ndim != 2 or probs.shape != (y.size, n_classes):
        raise ValueError(f"expected probs [N, {n_classes}] and labels [N], got {probs.shape} and {y.shape}")
    if not y.size:
        raise ValueError("nothing to evaluate: no images")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must be class indices in [0, {n_classes})")

    used = resolve_thresholds(task, thresholds)
    scored = _Scored(y, probs, decide(probs, task, used), task)
    point = {k: _value(v[0]) for k, v in scored.table(np.ones((1, y.size))).items()}

    cm = np.bincount(y * n_classes + scored.decided, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    counts = cm.sum(axis=1)
    per_class = {}
    for c, name in enumerate(task.classes):
        tp = cm[c, c]
        fp, fn = cm[:, c].sum() - tp, cm[c, :].sum() - tp
        per_class[name] = ClassMetrics(
            n=int(counts[c]),
            sensitivity=point[f"{name}_sensitivity"],
            label_sensitivity=point[f"{name}_label_sensitivity"],
            specificity=point[f"{name}_specificity"],
            precision=_ratio(tp, tp + fp),
            f1=_ratio(2 * tp, 2 * tp + fp + fn),
            auc=point[f"{name}_auc"],
        )

    reject_rate = reject_recall = None
    if task.reject is not None:
        rejected = scored.decided == task.index(task.reject)
        reject_rate = _ratio(float(rejected[scored.clinical].sum()), float(scored.clinical.sum()))
        reject_recall = _ratio(float(rejected[~scored.clinical].sum()), float((~scored.clinical).sum()))

    by_group: dict[str, dict[str, GroupSummary]] = {}
    for group_name, values in (groups or {}).items():
        values = np.asarray(values).astype(str).reshape(-1)
        if values.size != y.size:
            raise ValueError(f"group {group_name!r} has {values.size} values for {y.size} images")
        by_group[group_name] = {
            str(v): _group_summary(scored.subset(np.flatnonzero(values == v))) for v in np.unique(values)
        }

    return EvaluationReport(
        task=task.name,
        n=int(y.size),
        classes=list(task.classes),
        positives=list(task.positives),
        negative=task.negative,
        reject=task.reject,
        n_per_class={name: int(counts[c]) for c, name in enumerate(task.classes)},
        thresholds=used,
        auc_abnormal=point["auc_abnormal"],
        sensitivity_abnormal=point["sensitivity_abnormal"],
        specificity_abnormal=point["specificity_abnormal"],
        sensitivity=point["sensitivity_abnormal"],
        specificity=point["specificity_abnormal"],
        auc=point["auc_abnormal"],
        n_abnormal=int((scored.clinical & scored.abnormal_true).sum()),
        n_not_abnormal=int((scored.clinical & ~scored.abnormal_true).sum()),
        per_class=per_class,
        intervals=_bootstrap(scored, n_boot, seed) if n_boot > 0 else {},
        n_boot=int(n_boot),
        seed=int(seed),
        confusion_matrix=cm.tolist(),
        confusion_labels=list(task.classes),
        ece=reliability_bins(y, probs).ece,
        reject_rate_xray=reject_rate,
        reject_recall=reject_recall,
        by_group=by_group,
    )
