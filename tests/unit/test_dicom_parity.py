"""One film, one answer: real chest films saved as DICOM (8-bit MONOCHROME2, and 16-bit MONOCHROME1 inverted and
scaled by 257, no window) read as the same pixels as the same film as PNG, and a model scores them alike."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from care_companion.imaging.decode import decode_file, decode_image
from care_companion.models.predictor import BundlePredictor
from tests.conftest import shared_path, write_bundle
from tests.helpers import dicom_bytes

FILMS_PER_CLASS = 4


def as_png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def test_real_films_as_dicom_score_as_their_png(tmp_path: Path) -> None:
    root = shared_path("cxr-real")
    films = [
        decode_file(path)
        for folder in sorted(p for p in root.iterdir() if p.is_dir())
        for path in sorted(folder.iterdir())[:FILMS_PER_CLASS]
    ]
    assert len(films) >= 2 * FILMS_PER_CLASS
    ways = {
        "png": [decode_image(as_png(f), name="png") for f in films],
        "monochrome2_8bit": [decode_image(dicom_bytes(f, bits_stored=8), name="m2") for f in films],
        "monochrome1_16bit": [
            decode_image(dicom_bytes((255 - f.astype(np.uint16)) * 257, photometric="MONOCHROME1"), name="m1")
            for f in films
        ],
    }
    for way, decoded in ways.items():
        assert all(np.array_equal(a, b) for a, b in zip(decoded, ways["png"], strict=True)), way
    predictor = BundlePredictor(write_bundle(tmp_path / "bundle", backbone="test_resnet", input_size=64))
    scores = {way: predictor.predict_proba(decoded) for way, decoded in ways.items()}
    for way, probabilities in scores.items():
        assert np.abs(probabilities - scores["png"]).max() <= 0.01, way
