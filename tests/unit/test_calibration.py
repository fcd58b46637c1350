from __future__ import annotations

import numpy as np
import pytest

from care_companion.evaluation.metrics import reliability_bins
from care_companion.training.calibration import (
    expected_calibration_error,
    fit_temperature,
    nll,
    softmax_with_temperature,
)


def _overconfident(true_temperature: float, n: int = 6000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a calibrated model (labels drawn from its own softmax), multiplied by ``true_temperature``."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, 4))
    probs = softmax_with_temperature(logits)
    y = (rng.random(n)[:, None] > np.cumsum(probs, axis=1)).sum(axis=1)
    return logits * true_temperature, y


def test_softmax_with_temperature():
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [1000.0, 0.0, -1000.0]])
    p = softmax_with_temperature(logits, 2.0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    e = np.exp(np.array([1.0, 2.0, 3.0]) / 2)
    np.testing.assert_allclose(p[0], e / e.sum())
    np.testing.assert_allclose(p[1], 1 / 3)
    assert np.isfinite(p).all() and p[2, 0] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        softmax_with_temperature(logits, 0.0)


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_fit_temperature_recovers_known_temperature(true_t: float):
    logits, y = _overconfident(true_t)
    t = fit_temperature(logits, y)
    assert t == pytest.approx(true_t, rel=0.08)
    assert nll(logits, y, t) < nll(logits, y, 1.0)
    before = expected_calibration_error(y, softmax_with_temperature(logits))
    after = expected_calibration_error(y, softmax_with_temperature(logits, t))
    assert after < before
    assert after < 0.03


def test_fit_temperature_edges():
    assert fit_temperature(np.zeros((0, 4)), np.zeros(0, dtype=int)) == 1.0
    # perfectly separated data pushes towards the lower bound, never beyond it
    logits = np.eye(3)[[0, 1, 2] * 20]
    y = np.array([0, 1, 2] * 20)
    assert 0.05 <= fit_temperature(logits, y) <= 0.06
    # labels carrying no information push towards the upper bound
    rng = np.random.default_rng(1)
    noise = rng.normal(size=(3000, 3))
    assert fit_temperature(noise, rng.integers(0, 3, 3000)) > 5.0
    with pytest.raises(ValueError):
        fit_temperature(np.zeros((3, 2)), np.array([0, 1]))


def test_ece_hand_made():
    # bins are (k/15, (k+1)/15]: confidence 0.9 and 0.6 fall in different bins
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    y = np.array([0, 1, 0, 1])
    # bin of 0.9: acc 0.5, conf 0.9 (2 images); bin of 0.6: acc 1.0, conf 0.6 (2 images)
    assert expected_calibration_error(y, probs) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    assert expected_calibration_error(np.array([0]), np.array([[1.0, 0.0]])) == pytest.approx(0.0)
    assert np.isnan(expected_calibration_error(np.zeros(0, dtype=int), np.zeros((0, 2))))


def test_ece_agrees_with_evaluation_copy():
    rng = np.random.default_rng(3)
    probs = softmax_with_temperature(rng.normal(size=(500, 4)) * 3)
    y = rng.integers(0, 4, 500)
    assert reliability_bins(y, probs).ece == pytest.approx(expected_calibration_error(y, probs))
