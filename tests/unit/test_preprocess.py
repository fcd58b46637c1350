"""The shared preprocessing path: squash to a square, scale, standardise, batch."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from care_companion.imaging.preprocess import normalise, resize_square, to_model_input


def test_resize_square_squashes_without_keeping_aspect() -> None:
    image = np.zeros((100, 50), dtype=np.uint8)
    image[:, 25:] = 255  # right half white
    out = resize_square(image, 64)
    assert out.shape == (64, 64) and out.dtype == np.uint8
    assert out[:, :30].max() == 0 and out[:, 34:].min() == 255  # halves stay halves: no padding, no crop


def test_resize_square_matches_pil_bilinear() -> None:
    image = np.random.default_rng(0).integers(0, 256, (37, 53), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(image).resize((24, 24), resample=Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(resize_square(image, 24), expected)


def test_resize_square_same_size_is_a_copy() -> None:
    image = np.arange(64 * 64, dtype=np.int64).reshape(64, 64).astype(np.uint8)
    out = resize_square(image, 64)
    np.testing.assert_array_equal(out, image)
    out[0, 0] = 7
    assert image[0, 0] == 0


def test_resize_square_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        resize_square(np.zeros((8, 8, 3), dtype=np.uint8), 4)
    with pytest.raises(ValueError):
        resize_square(np.zeros((8, 8), dtype=np.uint8), 0)


def test_normalise_values_and_shapes() -> None:
    pixels = np.array([0, 51, 255], dtype=np.uint8)
    out = normalise(pixels, mean=0.2, std=0.5)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [-0.4, 0.0, 1.6], atol=1e-6)
    batch = np.zeros((2, 1, 4, 4), dtype=np.uint8)
    assert normalise(batch, 0.5, 0.25).shape == (2, 1, 4, 4)
    with pytest.raises(ValueError):
        normalise(pixels, 0.5, 0.0)


def test_to_model_input_is_resize_then_normalise() -> None:
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(30, 40), (64, 64), (100, 20)]]
    batch = to_model_input(images, 32, 0.45, 0.22)
    assert batch.shape == (3, 1, 32, 32) and batch.dtype == np.float32
    for i, image in enumerate(images):
        np.testing.assert_array_equal(batch[i, 0], normalise(resize_square(image, 32), 0.45, 0.22))
    assert to_model_input([], 16, 0.5, 0.5).shape == (0, 1, 16, 16)
