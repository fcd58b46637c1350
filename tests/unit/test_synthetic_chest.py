"""Synthetic chest films and non-X-ray images: shapes, determinism, where the disease shows, offline loading."""

from __future__ import annotations

import hashlib
import re
import socket
from pathlib import Path

import numpy as np
import pytest

from care_companion.data import synthetic_chest
from care_companion.data.synthetic_chest import (
    make_unknown_images,
    natural_images,
    synth_chest,
    synth_non_radiograph,
    write_synthetic_chest_tree,
)

SIZE = 128
# Fixed zones (fractions of the image) well inside the lungs of every synthetic habitus.
LOWER_ZONE = (slice(int(0.52 * SIZE), int(0.64 * SIZE)), [slice(int(0.24 * SIZE), int(0.4 * SIZE))])
UPPER_ZONE = (slice(int(0.2 * SIZE), int(0.32 * SIZE)), [slice(int(0.27 * SIZE), int(0.4 * SIZE))])


def _zone_mean(image: np.ndarray, zone: tuple[slice, list[slice]]) -> float:
    """Mean of a zone in both lungs (the column slice and its mirror image)."""
    rows, (cols,) = zone
    mirrored = slice(SIZE - cols.stop, SIZE - cols.start)
    return float(np.concatenate([image[rows, cols].ravel(), image[rows, mirrored].ravel()]).mean())


@pytest.mark.parametrize("label", ["normal", "pneumonia", "tuberculosis"])
def test_synth_chest_shape_dtype_and_determinism(label: str) -> None:
    first = synth_chest(label, np.random.default_rng(3), size=96)
    again = synth_chest(label, np.random.default_rng(3), size=96)
    other = synth_chest(label, np.random.default_rng(4), size=96)
    assert first.shape == (96, 96) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first.std() > 20  # real structure, not a flat field


def test_synth_chest_rejects_other_labels() -> None:
    with pytest.raises(ValueError, match="covid"):
        synth_chest("covid", np.random.default_rng(0))


def test_disease_shows_in_the_expected_zone() -> None:
    # The same seed gives the same patient and exposure for every label, so differences are the disease.
    lower: dict[str, list[float]] = {"pneumonia": [], "tuberculosis": []}
    upper: dict[str, list[float]] = {"pneumonia": [], "tuberculosis": []}
    for seed in range(20):
        normal = synth_chest("normal", np.random.default_rng(seed), size=SIZE).astype(float)
        for label in lower:
            sick = synth_chest(label, np.random.default_rng(seed), size=SIZE).astype(float)
            lower[label].append(_zone_mean(sick, LOWER_ZONE) - _zone_mean(normal, LOWER_ZONE))
            upper[label].append(_zone_mean(sick, UPPER_ZONE) - _zone_mean(normal, UPPER_ZONE))
    assert np.mean(lower["pneumonia"]) > 2.0
    assert np.mean(lower["pneumonia"]) > 3 * np.mean(upper["pneumonia"])
    assert np.mean(upper["tuberculosis"]) > 1.0
    assert np.mean(upper["tuberculosis"]) > 3 * np.mean(lower["tuberculosis"])


def test_global_brightness_does_not_separate_the_classes() -> None:
    rng = np.random.default_rng(11)
    means = {label: [synth_chest(label, rng, size=64).mean() for _ in range(20)] for label in ["normal", "pneumonia"]}
    assert max(means["normal"]) > min(means["pneumonia"])
    assert max(means["pneumonia"]) > min(means["normal"])


def test_synth_non_radiograph_varied_and_deterministic() -> None:
    images = [synth_non_radiograph(np.random.default_rng(seed), size=64) for seed in range(12)]
    assert all(image.shape == (64, 64) and image.dtype == np.uint8 for image in images)
    np.testing.assert_array_equal(images[0], synth_non_radiograph(np.random.default_rng(0), size=64))
    assert len({hashlib.sha1(image.tobytes()).hexdigest() for image in images}) == 12
    assert np.std([image.mean() for image in images]) > 5


def test_bundled_sample_images_load_with_the_network_off(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for name in synthetic_chest.OFFLINE_SAMPLES:
        image = synthetic_chest._sample_image.__wrapped__(name)
        assert image.ndim == 2 and image.dtype == np.uint8 and min(image.shape) >= 64, name


def test_natural_images_can_outnumber_the_originals() -> None:
    n = len(synthetic_chest.OFFLINE_SAMPLES) + 6
    images = natural_images(np.random.default_rng(5), n, size=48)
    assert len(images) == n
    assert all(image.shape == (48, 48) and image.dtype == np.uint8 for image in images)
    again = natural_images(np.random.default_rng(5), n, size=48)
    assert all(np.array_equal(a, b) for a, b in zip(images, again, strict=True))


def test_make_unknown_images_mixes_both_kinds() -> None:
    images = make_unknown_images(np.random.default_rng(2), 9, size=48)
    assert len(images) == 9
    assert all(image.shape == (48, 48) and image.dtype == np.uint8 for image in images)
    assert make_unknown_images(np.random.default_rng(2), 0) == []


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.png"))}


def test_write_synthetic_chest_tree(tmp_path: Path) -> None:
    counts = write_synthetic_chest_tree(tmp_path / "a", 5, seed=9, size=64)
    assert counts == {"normal": 5, "pneumonia": 5, "tuberculosis": 5, "unknown": 5}
    pattern = re.compile(r"^synth-patient(\d{4})_img([123])\.png$")
    patients: dict[str, set[str]] = {}
    for label, count in counts.items():
        files = sorted((tmp_path / "a" / label).iterdir())
        assert len(files) == count
        for path in files:
            match = pattern.match(path.name)
            assert match, path.name
            patients.setdefault(match.group(1), set()).add(label)
    assert all(len(labels) == 1 for labels in patients.values())  # a patient never spans two classes
    per_patient = [len(list((tmp_path / "a").rglob(f"synth-patient{p}_*.png"))) for p in patients]
    assert all(1 <= k <= 3 for k in per_patient) and len(patients) < 20

    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "a") != {}
    write_synthetic_chest_tree(tmp_path / "b", 5, seed=9, size=64)
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    one, two = (write_synthetic_chest_tree(tmp_path / f"w{w}", 40, seed=9, size=64, workers=w) for w in (1, 2))
    assert one == two and _tree_digest(tmp_path / "w1") == _tree_digest(tmp_path / "w2")  # > 64 patients: a pool

    counts = write_synthetic_chest_tree(tmp_path / "c", 2, seed=1, size=64, include_unknown=False)
    assert counts == {"normal": 2, "pneumonia": 2, "tuberculosis": 2}
    assert not (tmp_path / "c" / "unknown").exists()
