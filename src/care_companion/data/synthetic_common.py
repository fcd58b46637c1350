"""Drawing and film-exposure helpers shared by the synthetic generators (chest films, wrist studies).

Coordinates are fractions of a square image (row ``Y`` and column ``X`` in [0, 1]); densities are
attenuation-like maps that :func:`reposition` and :func:`develop` turn into a film.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Row (Y) and column (X) coordinates in [0, 1] for a square image."""
    axis = np.linspace(0.0, 1.0, size)
    return np.meshgrid(axis, axis, indexing="ij")


def soft(signed: np.ndarray, sharpness: float) -> np.ndarray:
    """A soft 0..1 mask from a signed inside-distance (positive inside)."""
    return 1.0 / (1.0 + np.exp(-np.clip(signed * sharpness, -50.0, 50.0)))


def ellipse(
    Y: np.ndarray, X: np.ndarray, cy: float, cx: float, b: float, a: float, sharpness: float = 25.0
) -> np.ndarray:
    """Soft mask of an axis-aligned ellipse with half-height ``b`` and half-width ``a``."""
    r = np.sqrt(((X - cx) / a) ** 2 + ((Y - cy) / b) ** 2)
    return soft(1.0 - r, sharpness)


def smooth_noise(rng: np.random.Generator, size: int, sigma: float | tuple[float, float]) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to [0, 1] (``sigma`` per axis for anisotropic grain)."""
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma)
    low, high = field.min(), field.max()
    return (field - low) / (high - low + 1e-12)


def band(Y: np.ndarray, curve: np.ndarray, half: float) -> np.ndarray:
    """Soft band of half-thickness ``half`` around the row position ``curve`` (one value per pixel)."""
    return np.exp(-0.5 * ((Y - curve) / half) ** 2)


def to_u8(image: np.ndarray) -> np.ndarray:
    """Clip to [0, 1] and quantise to ``uint8``."""
    return np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def child(rng: np.random.Generator) -> np.random.Generator:
    """An independent generator seeded from ``rng``."""
    return np.random.default_rng(int(rng.integers(0, 2**63 - 1)))


def save_png(image: np.ndarray, path: Path) -> None:
    """Write a 2-D ``uint8`` image as PNG (parent folders are created)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(image)).save(path, format="PNG")


def reposition(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    degrees: float = 4.0,
    scale: tuple[float, float] = (0.93, 1.07),
    shift: float = 0.03,
) -> np.ndarray:
    """Patient positioning: a random rotation, zoom and shift about the image centre (edges repeat).

    Args:
        image: square density map.
        rng: source of the draws.
        degrees: largest rotation either way.
        scale: range of the zoom factor.
        shift: largest shift either way, as a fraction of the side.
    """
    size = image.shape[0]
    angle = np.deg2rad(rng.uniform(-degrees, degrees))
    zoom = rng.uniform(*scale)
    offset_px = rng.uniform(-shift, shift, size=2) * size
    cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
    matrix = np.array([[cos, -sin], [sin, cos]])
    centre = np.array([size / 2.0, size / 2.0])
    offset = centre - matrix @ (centre + offset_px)
    return ndimage.affine_transform(image, matrix, offset=offset, order=1, mode="nearest")


def develop(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    heel: tuple[float, float] = (0.07, 0.05),
    gamma: tuple[float, float] = (0.7, 1.4),
    contrast: tuple[float, float] = (0.75, 1.25),
    brightness: float = 0.13,
    blur: tuple[float, float] = (0.3, 1.1),
    noise: tuple[float, float] = (0.006, 0.03),
) -> np.ndarray:
    """Exposure of a positioned film: heel-effect gradient, gamma, contrast, brightness, blur and quantum noise.

    Args:
        image: film in roughly [0, 1].
        rng: source of the draws.
        heel: largest gradient across the columns and the rows.
        gamma: range of the gamma exponent.
        contrast: range of the contrast factor about mid-grey.
        brightness: largest brightness offset either way.
        blur: range of the Gaussian blur sigma, in pixels of a 256-pixel image.
        noise: range of the noise standard deviation.
    """
    size = image.shape[0]
    axis = np.linspace(0.0, 1.0, size)
    Y, X = axis[:, None], axis[None, :]
    image = image + rng.uniform(-heel[0], heel[0]) * (X - 0.5) + rng.uniform(-heel[1], heel[1]) * (Y - 0.5)
    image = np.clip(image, 0.0, 1.0) ** rng.uniform(*gamma)
    image = (image - 0.5) * rng.uniform(*contrast) + 0.5 + rng.uniform(-brightness, brightness)
    image = ndimage.gaussian_filter(image, rng.uniform(*blur) * size / 256)
    return image + rng.normal(0.0, rng.uniform(*noise), size=image.shape)


def draw_letter(image: np.ndarray, letter: str, top: int, left: int, height: int, width: int, level: float) -> None:
    """Burn a blocky lead-marker letter ("L" or "R") into ``image`` in place.

    Args:
        image: film to draw on.
        letter: "L" or "R".
        top: first row of the letter.
        left: first column of the letter.
        height: letter height in pixels.
        width: letter width in pixels.
        level: grey level of the marker.
    """
    stroke, bar = max(1, width // 3), max(1, height // 4)
    image[top : top + height, left : left + stroke] = level  # the stem
    if letter == "L":
        image[top + height - bar : top + height, left : left + width] = level
        return
    if letter != "R":
        raise ValueError(f"marker letter must be 'L' or 'R', not {letter!r}")
    middle = top + height // 2
    image[top : top + bar, left : left + width] = level  # bowl: top, middle and right side
    image[middle - bar // 2 : middle - bar // 2 + bar, left : left + width] = level
    image[top:middle, left + width - stroke : left + width] = level
    for row in range(middle, top + height):  # the leg, from the middle bar to the bottom right
        col = left + stroke + round((row - middle) / max(1, top + height - 1 - middle) * (width - 2 * stroke))
        image[row, col : col + stroke] = level
