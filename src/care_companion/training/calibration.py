"""Temperature scaling and expected calibration error.

Calibrated probabilities are ``softmax(logits / T)`` with one temperature ``T`` fitted on the validation
split by minimising the negative log-likelihood over ``log T`` (bounded to ``[0.05, 20]``).
"""

from __future__ import annotations

import math

import numpy as np

from care_companion.evaluation.metrics import expected_calibration_error
from care_companion.models.predictor import softmax

__all__ = ["expected_calibration_error", "fit_temperature", "nll", "softmax_with_temperature"]

T_MIN = 0.05
T_MAX = 20.0
ECE_BINS = 15


def softmax_with_temperature(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Calibrated probabilities ``softmax(logits / temperature)`` row-wise, for logits of shape [N, C]."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape [N, C], got {logits.shape}")
    return softmax(logits, float(temperature))


def _check_labels(logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y).astype(np.int64).reshape(-1)
    if logits.ndim != 2 or logits.shape[0] != y.shape[0]:
        raise ValueError(f"expected logits [N, C] and labels [N], got {logits.shape} and {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= logits.shape[1]):
        raise ValueError(f"labels must be class indices in [0, {logits.shape[1]})")
    return logits, y


def nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of labels ``y`` under ``softmax(logits / temperature)``."""
    logits, y = _check_labels(logits, y)
    if not y.size:
        return float("nan")
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(y.size), y]))


def fit_temperature(logits_val: np.ndarray, y_val: np.ndarray) -> float:
    """Temperature in ``[0.05, 20]`` minimising validation NLL; 1.0 for empty input.

    The NLL is convex in ``1 / T``, hence unimodal in ``log T``: a bounded scalar search finds the optimum.
    """
    logits, y = _check_labels(logits_val, y_val)
    if not y.size:
        return 1.0
    from scipy.optimize import minimize_scalar

    result = minimize_scalar(
        lambda log_t: nll(logits, y, math.exp(log_t)),
        bounds=(math.log(T_MIN), math.log(T_MAX)),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(min(max(math.exp(result.x), T_MIN), T_MAX))
