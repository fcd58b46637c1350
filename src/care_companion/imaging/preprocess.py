"""The one preprocessing path from decoded grayscale images to model input, shared by training and inference."""

from __future__ import annotations

import numpy as np


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Squash a grayscale image to ``size`` x ``size`` with bilinear resampling (aspect ratio not kept).

    Every source is distorted the same way on purpose, so that a model cannot tell sources apart by their
    padding or framing.

    Args:
        image: 2-D ``uint8`` grayscale image.
        size: side of the square output in pixels.
    """
    from PIL import Image

    if image.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {image.shape}")
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    pixels = np.ascontiguousarray(image, dtype=np.uint8)
    if pixels.shape == (size, size):
        return pixels.copy()
    resized = Image.fromarray(pixels).resize((size, size), resample=Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8).copy()


def normalise(image_u8: np.ndarray, mean: float, std: float) -> np.ndarray:
    """Scale 8-bit pixels to [0, 1], then standardise: ``(x / 255 - mean) / std`` as ``float32``.

    Args:
        image_u8: ``uint8`` pixels of any shape (one image or a batch).
        mean: mean subtracted after scaling to [0, 1].
        std: standard deviation divided by after subtracting the mean.
    """
    if std <= 0:
        raise ValueError(f"std must be positive, got {std}")
    scaled = np.asarray(image_u8, dtype=np.float32) / np.float32(255.0)
    return ((scaled - np.float32(mean)) / np.float32(std)).astype(np.float32, copy=False)


def to_model_input(images: list[np.ndarray], size: int, mean: float, std: float) -> np.ndarray:
    """Stack decoded images into a ``float32`` batch of shape [N, 1, size, size] for the model.

    Args:
        images: 2-D ``uint8`` grayscale images of any sizes.
        size: side of the square model input.
        mean: normalisation mean (of pixels scaled to [0, 1]).
        std: normalisation standard deviation.
    """
    batch = np.empty((len(images), 1, size, size), dtype=np.uint8)
    for i, image in enumerate(images):
        batch[i, 0] = resize_square(image, size)
    return normalise(batch, mean, std)
