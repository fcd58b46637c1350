"""Cheap per-image features for data-drift monitoring: intensity statistics, size, edge density.

Intensity and edge statistics are computed on a strided subsample whose longer side is at most
``MAX_SIDE`` pixels (every ``ceil(max(h, w) / MAX_SIDE)``-th row and column, no averaging: cheapest,
and unbiased for the intensity distribution of images that are smooth at that scale). Height, width
and aspect come from the original shape.

Measured (numpy 2.4, a busy 2-core machine, 500 calls, median / 95th percentile): ``describe`` of a
uint8 image takes 0.36 / 0.57 ms at 2000x2000, 0.31 / 0.36 ms at 3000x2500 and 0.34 / 0.39 ms at
256x256 (first call of a process about 1 ms).
"""

from __future__ import annotations

import math

import numpy as np

FEATURE_NAMES: tuple[str, ...] = (
    "mean",
    "std",
    "p05",
    "p50",
    "p95",
    "entropy",
    "height",
    "width",
    "aspect",
    "edge_density",
)
HISTOGRAM_BINS = 32
MAX_SIDE = 256
EDGE_THRESHOLD = 0.1
"""A pixel is an edge when its finite-difference gradient magnitude on the [0, 1] subsample exceeds this."""

_LEVELS = 256
_PERCENTILES = (0.05, 0.50, 0.95)
_SQUARES = np.arange(_LEVELS, dtype=np.float64) ** 2
_EDGE_TABLE = _SQUARES[:, None] + _SQUARES[None, :] > (EDGE_THRESHOLD * (_LEVELS - 1)) ** 2


def _to_levels(sample: np.ndarray) -> np.ndarray:
    """Quantise a subsample to 256 uint8 levels (level / 255 is the intensity in [0, 1]).

    uint8 is used as is; other integer types are scaled by their dtype's maximum (uint16 by 65535;
    negative values clip to 0); booleans map to 0/255; floats are assumed to be in [0, 1] (clipped).
    """
    dtype = sample.dtype
    if dtype == np.uint8:
        return sample
    if dtype == np.bool_:
        unit = sample.astype(np.float64)
    elif np.issubdtype(dtype, np.integer):
        unit = sample.astype(np.float64) / float(np.iinfo(dtype).max)
    elif np.issubdtype(dtype, np.floating):
        unit = sample.astype(np.float64)
        if not np.isfinite(unit).all():
            raise ValueError("image contains NaN or infinite values")
    else:
        raise ValueError(f"unsupported image dtype {dtype}; expected an integer, boolean or float array")
    return np.rint(np.clip(unit, 0.0, 1.0) * (_LEVELS - 1)).astype(np.uint8)


def _subsample(pixels: np.ndarray) -> np.ndarray:
    """Validate ``pixels`` and return the strided subsample (longer side at most ``MAX_SIDE``)."""
    if not isinstance(pixels, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(pixels).__name__}")
    if pixels.ndim != 2:
        raise ValueError(f"image must be a 2-D grayscale array, got shape {pixels.shape}")
    if pixels.size == 0:
        raise ValueError(f"image is empty (shape {pixels.shape})")
    step = math.ceil(max(pixels.shape) / MAX_SIDE)
    return pixels[::step, ::step] if step > 1 else pixels


def _sorted_value(cumulative: np.ndarray, k: int) -> int:
    """Level of the ``k``-th smallest pixel (0-based), read from the cumulative level histogram."""
    return int(np.searchsorted(cumulative, k, side="right"))


def _percentiles(counts: np.ndarray) -> list[float]:
    """Percentiles of the levels, identical to ``np.percentile(levels, q, method="linear")``, in [0, 1]."""
    cumulative = np.cumsum(counts)
    n = int(cumulative[-1])
    out = []
    for q in _PERCENTILES:
        position = q * (n - 1)
        lo = math.floor(position)
        hi = min(lo + 1, n - 1)
        v_lo, v_hi = _sorted_value(cumulative, lo), _sorted_value(cumulative, hi)
        out.append((v_lo + (position - lo) * (v_hi - v_lo)) / (_LEVELS - 1))
    return out


def _edge_density(levels: np.ndarray) -> float:
    """Fraction of pixels whose forward-difference gradient magnitude exceeds ``EDGE_THRESHOLD``.

    Works on int16 level differences and a 256x256 lookup table of ``dx**2 + dy**2 > threshold**2``, so
    no large float temporaries are allocated (they made a cold call several times slower).
    """
    if levels.shape[0] < 2 or levels.shape[1] < 2:
        return 0.0
    signed = levels.astype(np.int16)
    corner = signed[:-1, :-1]
    dx = np.abs(signed[:-1, 1:] - corner)
    dy = np.abs(signed[1:, :-1] - corner)
    return float(np.count_nonzero(_EDGE_TABLE[dx, dy])) / dx.size


def describe(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Features (in ``FEATURE_NAMES`` order) and the ``HISTOGRAM_BINS``-bin intensity histogram of one image.

    Args:
        pixels: 2-D grayscale image at its original upload size (uint8 preferred; see ``_to_unit``).

    Every intensity statistic is computed from the subsample quantised to 256 levels (exact for uint8):
    ``std`` is the population standard deviation, percentiles match ``np.percentile`` (linear),
    ``entropy`` is in bits (0 to 8) and ``edge_density`` is in [0, 1].
    """
    levels = _to_levels(_subsample(pixels))
    counts = np.bincount(levels.ravel(), minlength=_LEVELS)
    probabilities = counts / counts.sum()
    values = np.arange(_LEVELS, dtype=np.float64) / (_LEVELS - 1)
    mean = float(probabilities @ values)
    std = math.sqrt(float(probabilities @ (values - mean) ** 2))
    nonzero = probabilities[probabilities > 0]
    entropy = float(-(nonzero * np.log2(nonzero)).sum()) + 0.0
    height, width = pixels.shape
    features = np.array(
        [mean, std, *_percentiles(counts), entropy, height, width, width / height, _edge_density(levels)],
        dtype=np.float64,
    )
    histogram = probabilities.reshape(HISTOGRAM_BINS, _LEVELS // HISTOGRAM_BINS).sum(axis=1)
    return features, histogram


def image_features(pixels: np.ndarray) -> np.ndarray:
    """Feature vector of one image, float64 in ``FEATURE_NAMES`` order (see ``describe``)."""
    return describe(pixels)[0]


def intensity_histogram(pixels: np.ndarray) -> np.ndarray:
    """``HISTOGRAM_BINS``-bin histogram of the subsampled intensities, float64 summing to 1."""
    return describe(pixels)[1]
