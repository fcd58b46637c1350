from __future__ import annotations

from pathlib import Path

import pytest

from care_companion.data.folders import scan_class_folders
from care_companion.data.patients import origin_and_patient
from care_companion.tasks import CHEST


@pytest.mark.parametrize(
    ("stem", "origin", "patient"),
    [
        ("person1010_virus_1695", "kermany", "kermany:person1010"),
        ("person1010_bacteria_2931", "kermany", "kermany:person1010"),
        ("IM-0162-0001", "kermany", "kermany:im-0162"),
        ("NORMAL2-IM-0007-0001", "kermany", "kermany:normal2-im-0007"),
        ("CHNCXR_0273_0", "shenzhen", "shenzhen:chncxr_0273"),
        ("MCUCXR_0001_0", "montgomery", "montgomery:mcucxr_0001"),
        ("Tuberculosis-12", "tb-database", None),
        ("127", "numbered", None),
        ("synth-patient0003_img1", "synthetic", "synthetic:synth-patient0003"),
        ("random-name", "other", None),
    ],
)
def test_origin_and_patient(stem, origin, patient):
    assert origin_and_patient(stem) == (origin, patient)


def test_scan_kaggle_layout(tmp_path: Path):
    for rel in [
        "data/train/NORMAL/a.jpg",
        "data/test/Pneumonia/b.png",
        "val/TUBERCULOSIS/nested/c.jpeg",
        "train/Unknown/d.jpg",
        "readme/e.jpg",
        "train/normal/.hidden.jpg",
        "train/normal/notes.txt",
    ]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found, loose = scan_class_folders(tmp_path, CHEST)
    assert {(f.relative, f.label) for f in found} == {
        ("data/train/NORMAL/a.jpg", "normal"),
        ("data/test/Pneumonia/b.png", "pneumonia"),
        ("val/TUBERCULOSIS/nested/c.jpeg", "tuberculosis"),
        ("train/Unknown/d.jpg", "unknown"),
    }
    assert loose == ["readme/e.jpg"]
