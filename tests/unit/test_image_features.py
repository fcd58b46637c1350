from __future__ import annotations

import math

import numpy as np
import pytest

from care_companion.monitoring.features import (
    EDGE_THRESHOLD,
    FEATURE_NAMES,
    HISTOGRAM_BINS,
    MAX_SIDE,
    describe,
    image_features,
    intensity_histogram,
)


def _named(pixels: np.ndarray) -> dict[str, float]:
    return dict(zip(FEATURE_NAMES, image_features(pixels).tolist(), strict=True))


def _naive(pixels: np.ndarray) -> np.ndarray:
    """Straightforward float re-implementation of the documented features (uint8 input)."""
    step = math.ceil(max(pixels.shape) / MAX_SIDE)
    unit = pixels[::step, ::step].astype(np.float64) / 255
    _, counts = np.unique(pixels[::step, ::step], return_counts=True)
    p = counts / counts.sum()
    dx = np.diff(unit, axis=1)[:-1, :]
    dy = np.diff(unit, axis=0)[:, :-1]
    edges = float(np.mean(np.hypot(dx, dy) > EDGE_THRESHOLD)) if dx.size else 0.0
    h, w = pixels.shape
    return np.array(
        [unit.mean(), unit.std(), *np.percentile(unit, [5, 50, 95]), -(p * np.log2(p)).sum(), h, w, w / h, edges]
    )


def test_constant_image():
    f = _named(np.full((10, 20), 128, dtype=np.uint8))
    level = 128 / 255
    assert f == pytest.approx(
        {
            "mean": level,
            "std": 0.0,
            "p05": level,
            "p50": level,
            "p95": level,
            "entropy": 0.0,
            "height": 10,
            "width": 20,
            "aspect": 2.0,
            "edge_density": 0.0,
        },
        abs=1e-12,
    )


def test_half_black_half_white():
    image = np.zeros((100, 100), dtype=np.uint8)
    image[:, 50:] = 255
    f = _named(image)
    # Median: linear interpolation between the 5000th (0) and 5001st (1) sorted pixels.
    assert (f["mean"], f["std"], f["p05"], f["p50"], f["p95"], f["entropy"]) == pytest.approx((0.5, 0.5, 0, 0.5, 1, 1))
    # Only the step from column 49 to 50 is an edge: 99 of the 99 x 99 pixels with both neighbours.
    assert f["edge_density"] == pytest.approx(1 / 99)


def test_checkerboard():
    image = (np.indices((8, 8)).sum(axis=0) % 2 * 255).astype(np.uint8)
    f = _named(image)
    assert (f["mean"], f["std"], f["entropy"], f["edge_density"]) == pytest.approx((0.5, 0.5, 1.0, 1.0))
    assert (f["height"], f["width"], f["aspect"]) == (8, 8, 1.0)


def test_uniform_noise():
    image = np.random.default_rng(0).integers(0, 256, size=(256, 256), dtype=np.uint8)
    f = _named(image)
    assert f["mean"] == pytest.approx(0.5, abs=0.005)
    assert f["std"] == pytest.approx(math.sqrt((256**2 - 1) / 12) / 255, abs=0.005)
    assert (f["p05"], f["p50"], f["p95"]) == pytest.approx((0.05, 0.5, 0.95), abs=0.01)
    assert 7.99 < f["entropy"] <= 8.0
    assert 0.95 < f["edge_density"] < 0.99
    np.testing.assert_allclose(image_features(image), _naive(image), atol=1e-12)


@pytest.mark.parametrize("shape", [(1, 1), (1, 300), (37, 5), (255, 257), (600, 513), (3000, 2500)])
def test_matches_naive_float_implementation(shape):
    rng = np.random.default_rng(sum(shape))
    # Smooth-ish image with noise, so that edges are neither all nor none.
    ramp = np.add.outer(np.linspace(0, 120, shape[0]), np.linspace(0, 90, shape[1]))
    image = np.clip(ramp + rng.normal(0, 12, size=shape), 0, 255).astype(np.uint8)
    np.testing.assert_allclose(image_features(image), _naive(image), atol=1e-12)


def test_size_features_come_from_the_original_shape():
    f = _named(np.zeros((3000, 2500), dtype=np.uint8))
    assert (f["height"], f["width"], f["aspect"]) == (3000, 2500, pytest.approx(2500 / 3000))


def test_downsampling_keeps_the_mean_of_a_smooth_image():
    image = np.add.outer(np.linspace(0, 200, 2000), np.linspace(0, 55, 1500)).astype(np.uint8)
    assert _named(image)["mean"] == pytest.approx(image.mean() / 255, abs=0.002)
    assert _named(image)["p50"] == pytest.approx(np.median(image) / 255, abs=0.01)


def test_histogram():
    rng = np.random.default_rng(1)
    for image in (rng.integers(0, 256, size=(700, 900), dtype=np.uint8), np.full((4, 4), 128, np.uint8)):
        hist = intensity_histogram(image)
        assert hist.shape == (HISTOGRAM_BINS,) and hist.dtype == np.float64
        assert hist.sum() == pytest.approx(1.0)
        assert np.all(hist >= 0)
    assert intensity_histogram(np.full((4, 4), 128, np.uint8))[128 // 8] == 1.0
    half = np.zeros((10, 10), np.uint8)
    half[5:] = 255
    expected = np.zeros(HISTOGRAM_BINS)
    expected[[0, -1]] = 0.5
    np.testing.assert_allclose(intensity_histogram(half), expected)


def test_describe_agrees_with_single_functions():
    image = np.random.default_rng(2).integers(0, 256, size=(300, 200), dtype=np.uint8)
    features, hist = describe(image)
    assert features.dtype == np.float64 and features.shape == (len(FEATURE_NAMES),)
    np.testing.assert_array_equal(features, image_features(image))
    np.testing.assert_array_equal(hist, intensity_histogram(image))


def test_other_dtypes_are_scaled_to_unit_range():
    image = np.random.default_rng(3).integers(0, 256, size=(64, 80), dtype=np.uint8)
    expected = image_features(image)
    np.testing.assert_allclose(image_features(image.astype(np.uint16) * 257), expected, atol=1e-12)
    np.testing.assert_allclose(image_features(image / 255.0), expected, atol=1e-12)
    np.testing.assert_allclose(image_features(image.astype(np.float32) / 255), expected, atol=1e-12)
    binary = _named(image > 127)
    assert binary["mean"] == pytest.approx(np.mean(image > 127))
    assert _named(np.full((3, 3), 2.0))["mean"] == 1.0  # floats clip to [0, 1]


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 4, 3), np.uint8),
        np.zeros(16, np.uint8),
        np.zeros((0, 5), np.uint8),
        np.array(3, np.uint8),
        np.full((4, 4), np.nan),
        np.zeros((4, 4), np.complex64),
    ],
)
def test_bad_inputs_raise(bad):
    with pytest.raises(ValueError):
        describe(bad)


def test_non_array_raises():
    with pytest.raises(ValueError, match="numpy array"):
        image_features([[0, 1], [2, 3]])  # type: ignore[arg-type]
