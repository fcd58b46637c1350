"""The drift window: each test family reacts to its own kind of change, stays quiet without one, and the
verdict combines them; online performance from verdicts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from care_companion.errors import ModelError
from care_companion.monitoring.drift import FAMILIES, DriftWindow, Observation
from care_companion.monitoring.features import FEATURE_NAMES, HISTOGRAM_BINS
from care_companion.monitoring.performance import online_performance
from care_companion.monitoring.profile import ReferenceProfile, fit_pca
from care_companion.tasks import CHEST, WRIST

DIM = 24  # raw embedding width


def make_profile(rng: np.random.Generator, *, n: int = 400) -> ReferenceProfile:
    """A chest reference: standard-normal features and embeddings, a fixed class mix and confident decisions."""
    train_embeddings = rng.normal(size=(n, DIM))
    mean, components, explained = fit_pca(train_embeddings, 8)
    val = rng.normal(size=(n, DIM))
    return ReferenceProfile(
        task="chest",
        classes=list(CHEST.classes),
        feature_names=list(FEATURE_NAMES),
        features=rng.normal(size=(n, len(FEATURE_NAMES))),
        histogram=np.full(HISTOGRAM_BINS, 1 / HISTOGRAM_BINS),
        pca_mean=mean,
        pca_components=components,
        pca_explained=explained,
        embeddings={"fp32": (val - mean) @ components.T},
        class_mix=np.array([0.5, 0.3, 0.1, 0.1]),
        confidences=rng.beta(8, 2, size=n),
        rejection_rate=0.1,
        counts={"feature_images": n},
    )


def draw(
    rng: np.random.Generator,
    n: int,
    *,
    feature_shift: float = 0.0,
    embedding_shift: float = 0.0,
    mix: tuple[float, ...] = (0.5, 0.3, 0.1, 0.1),
    confidence: tuple[float, float] = (8, 2),
) -> list[Observation]:
    """Inputs like the reference, or changed in one respect."""
    out = []
    for _ in range(n):
        decided = int(rng.choice(4, p=mix))
        probs = np.full(4, 0.0)
        probs[decided] = rng.beta(*confidence)
        probs[(decided + 1) % 4] = 1 - probs[decided]
        out.append(
            Observation(
                features=(rng.normal(size=len(FEATURE_NAMES)) + feature_shift,),
                histograms=(np.full(HISTOGRAM_BINS, 1 / HISTOGRAM_BINS),),
                embedding=rng.normal(size=DIM) + embedding_shift,
                probabilities=probs,
                decided=decided,
                rejected=decided == 3,
            )
        )
    return out


def window_for(profile: ReferenceProfile | None, inputs: list[Observation], **kwargs: object) -> DriftWindow:
    window = DriftWindow(CHEST, profile, size=200, min_images=20, permutations=200, **kwargs)  # type: ignore[arg-type]
    for item in inputs:
        window.observe(item)
    return window


def test_no_change_gives_no_alarm_in_most_windows() -> None:
    rng = np.random.default_rng(0)
    profile = make_profile(rng)
    alarms = [window_for(profile, draw(rng, 80)).check(seed=k).drifted for k in range(40)]
    assert None not in alarms
    assert sum(alarms) <= 5  # alpha 0.05 over five families after Holm: about 2 of 40 expected


@pytest.mark.parametrize(
    ("change", "family"),
    [
        ({"feature_shift": 1.0}, "features"),
        ({"embedding_shift": 0.8}, "embedding"),
        ({"mix": (0.1, 0.7, 0.1, 0.1)}, "class_mix"),
        ({"confidence": (2, 2)}, "confidence"),
        ({"mix": (0.4, 0.2, 0.0, 0.4)}, "rejections"),
    ],
)
def test_each_family_flags_its_own_change(change: dict, family: str) -> None:
    rng = np.random.default_rng(1)
    profile = make_profile(rng)
    status = window_for(profile, draw(rng, 150, **change)).check(seed=1)
    assert status.drifted is True
    assert family in status.flagged
    assert status.p_values[family] is not None and status.p_values[family] < 0.05


def test_status_reports_medians_mixes_and_rates() -> None:
    rng = np.random.default_rng(2)
    profile = make_profile(rng)
    inputs = draw(rng, 60, feature_shift=2.0)
    status = window_for(profile, inputs, model_version="7").check(seed=0)
    assert status.model_version == "7" and status.available
    rejected = sum(item.rejected for item in inputs)
    assert status.window_inputs == 60 and status.window_images == 60 - rejected
    assert [f.name for f in status.features] == list(FEATURE_NAMES)
    assert all(f.current_median - f.reference_median > 1.0 for f in status.features)
    assert status.class_mix is not None and status.class_mix.bins == CHEST.classes
    assert sum(status.class_mix.current) == pytest.approx(1.0)
    assert status.rejection_rate["current"] == pytest.approx(rejected / 60)
    assert status.confidence is not None and sum(status.confidence.current) == pytest.approx(1.0)
    assert status.kl_baseline == pytest.approx(0.0, abs=1e-9)
    assert set(status.p_values) == set(FAMILIES)


def test_too_few_inputs_leave_the_verdict_open() -> None:
    rng = np.random.default_rng(3)
    status = window_for(make_profile(rng), draw(rng, 10)).check()
    assert status.drifted is None and all(p is None for p in status.p_values.values())


def test_window_keeps_only_the_latest_inputs() -> None:
    rng = np.random.default_rng(4)
    window = DriftWindow(CHEST, make_profile(rng), size=50, min_images=20)
    for item in draw(rng, 120, feature_shift=3.0) + draw(rng, 50):
        window.observe(item)
    assert len(window) == 50
    assert window.check(seed=0).p_values["features"] > 0.05  # the shifted inputs have left the window


def test_without_profile_drift_is_unavailable_with_the_reason() -> None:
    rng = np.random.default_rng(5)
    status = window_for(None, draw(rng, 40), unavailable="no profile here").check()
    assert status.available is False and status.reason == "no profile here" and status.drifted is None


def test_profile_round_trip_and_projection(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    profile = make_profile(rng)
    path = profile.save(tmp_path / "profile.npz")
    again = ReferenceProfile.load(path)
    np.testing.assert_array_equal(again.features, profile.features)
    np.testing.assert_array_equal(again.embeddings["fp32"], profile.embeddings["fp32"])
    assert again.classes == profile.classes and again.rejection_rate == profile.rejection_rate
    assert again.reference_embeddings("int8") is again.embeddings["fp32"]  # no INT8 reference: float32's
    with pytest.raises(ModelError, match="do not match"):
        again.project(np.zeros((2, DIM + 1)))
    (tmp_path / "bad.npz").write_bytes(b"not a profile")
    with pytest.raises(ModelError, match="unreadable reference profile"):
        ReferenceProfile.load(tmp_path / "bad.npz")


def test_pca_keeps_the_directions_of_largest_variance() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(500, 5)) * np.array([10.0, 5.0, 1.0, 0.1, 0.1])
    mean, components, explained = fit_pca(x, 2)
    np.testing.assert_allclose(mean, x.mean(axis=0))
    assert components.shape == (2, 5)
    assert abs(components[0, 0]) > 0.99 and abs(components[1, 1]) > 0.99
    assert explained[0] > explained[1] > 0 and explained.sum() < 1


def test_online_performance_counts_missed_disease_and_false_alarms() -> None:
    outcomes = [
        ("pneumonia", True, "pneumonia"),  # true positive, correct label
        ("tuberculosis", True, "pneumonia"),  # true positive, wrong label
        ("normal", False, "tuberculosis"),  # missed disease
        ("normal", False, "normal"),  # true negative
        ("pneumonia", True, "normal"),  # false alarm
        (None, None, "normal"),  # confirmed without a prediction
    ]
    figures = online_performance(outcomes, CHEST, window=50)
    assert (figures.true_positives, figures.false_negatives, figures.true_negatives, figures.false_positives) == (
        2,
        1,
        1,
        1,
    )
    assert figures.sensitivity == pytest.approx(2 / 3) and figures.specificity == pytest.approx(1 / 2)
    assert figures.accuracy == pytest.approx(2 / 5) and figures.studies == 5 and figures.without_prediction == 1
    empty = online_performance([], WRIST, window=50)
    assert empty.sensitivity is None and empty.studies == 0
