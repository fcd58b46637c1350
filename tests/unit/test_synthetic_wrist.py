"""Synthetic two-view wrist studies: shapes, determinism, laterality, views, where fractures show, the GRAZ layout
on disk, and that the task is learnable but not trivial."""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from care_companion.data.synthetic_wrist import (
    GRAZ_COLUMNS,
    WRIST_VIEWS,
    WristStudy,
    synthetic_wrist_studies,
    synthetic_wrist_study,
    write_wrist_studies,
)

STEM = re.compile(r"^(\d{4})_(\d{10})_(\d{2})_WRI-([LR])([12])_([MF])(\d{3})$")


def study(seed: int, **options: object) -> WristStudy:
    return synthetic_wrist_study(np.random.default_rng(seed), **options)  # type: ignore[arg-type]


def test_study_shapes_dtypes_and_determinism() -> None:
    first = study(3, fractured=True, size=96)
    again = study(3, fractured=True, size=96)
    other = study(4, fractured=True, size=96)
    assert list(first.views) == list(WRIST_VIEWS) and first.label == "fracture" and first.laterality in ("L", "R")
    assert first.fracture_views and set(first.fracture_views) <= set(first.views)
    assert first.ao_classification.startswith("23") and first.sex in ("M", "F") and 3.0 <= first.age < 19.0
    for view, image in first.views.items():
        assert image.shape == (96, 96) and image.dtype == np.uint8
        assert image.std() > 20  # bones and soft tissue, not a flat field
        np.testing.assert_array_equal(image, again.views[view])
        assert not np.array_equal(image, other.views[view])
    normal = study(3, fractured=False, size=96)
    assert normal.label == "normal" and normal.fracture_views == () and normal.ao_classification == ""


def test_a_view_does_not_depend_on_the_other_views() -> None:
    both = study(5, fractured=False, size=64)
    only_pa = study(5, fractured=False, size=64, views=["pa"])
    only_lateral = study(5, fractured=False, size=64, views=("lateral",))
    assert list(only_pa.views) == ["pa"] and list(only_lateral.views) == ["lateral"]
    np.testing.assert_array_equal(both.views["pa"], only_pa.views["pa"])
    np.testing.assert_array_equal(both.views["lateral"], only_lateral.views["lateral"])


def test_laterality_mirrors_the_films() -> None:
    right = study(6, fractured=True, size=80, laterality="R", marker=False, fracture_views=("pa", "lateral"))
    left = study(6, fractured=True, size=80, laterality="L", marker=False, fracture_views=("pa", "lateral"))
    assert (right.laterality, left.laterality) == ("R", "L")
    for view in WRIST_VIEWS:
        np.testing.assert_array_equal(left.views[view], right.views[view][:, ::-1])
        assert not np.array_equal(left.views[view], right.views[view])


def test_the_marker_is_burnt_into_a_top_corner() -> None:
    plain = study(7, fractured=False, size=128, marker=False)
    marked = study(7, fractured=False, size=128, marker=True)
    for view in WRIST_VIEWS:
        changed = np.argwhere(marked.views[view] != plain.views[view])
        assert len(changed) > 8
        assert changed[:, 0].max() < 0.2 * 128  # top rows only
        assert changed[:, 1].max() < 0.2 * 128 or changed[:, 1].min() > 0.8 * 128  # one corner
        assert marked.views[view][tuple(changed.T)].mean() > 240


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"views": ["ap"]}, "views"),
        ({"views": []}, "views"),
        ({"views": ["pa", "pa"]}, "views"),
        ({"laterality": "X"}, "laterality"),
        ({"fractured": False, "fracture_views": ["pa"]}, "without a fracture"),
        ({"views": ["pa"], "fracture_views": ["lateral"]}, "rendered views"),
    ],
)
def test_bad_options_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        study(0, **{"fractured": True, "size": 32, **options})


def test_a_drawn_pattern_that_misses_a_one_view_study_falls_back_to_its_view() -> None:
    only_pa = {("pa",): 1.0}
    assert study(1, fractured=True, size=32, visibility=only_pa).fracture_views == ("pa",)
    assert study(1, fractured=True, size=32, views=["lateral"], visibility=only_pa).fracture_views == ("lateral",)


def test_complete_radius_fractures_darken_the_distal_radius_band() -> None:
    # Same seed = same patient, positioning and exposure: the difference is the fracture (and its soft-tissue
    # swelling, which brightens). Rows as fractions of the film: the distal radius lies around 0.55-0.85.
    size, band, shaft = 128, slice(int(0.45 * 128), int(0.9 * 128)), slice(int(0.9 * 128), None)
    in_band, below = [], []
    for seed in range(60):
        broken = study(seed, fractured=True, size=size, fracture_views=("pa",))
        if not broken.ao_classification.startswith("23r-M/3.1"):
            continue
        normal = study(seed, fractured=False, size=size)
        darker = broken.views["pa"].astype(int) - normal.views["pa"].astype(int) < -12
        in_band.append(int(darker[band].sum()))
        below.append(int(darker[shaft].sum()))
        np.testing.assert_array_equal(broken.views["lateral"], normal.views["lateral"])  # PA-only: lateral as normal
    assert len(in_band) >= 20
    assert np.mean(np.array(in_band) >= 20) >= 0.9 and np.median(in_band) > 100
    assert np.percentile(below, 90) <= 5  # the proximal shaft is untouched
    assert max(in_band) > 10 * min(in_band) and np.percentile(in_band, 90) > 2.5 * np.percentile(in_band, 10)


def test_studies_have_exact_shares_and_all_kinds() -> None:
    studies = synthetic_wrist_studies(120, seed=2, size=32, fracture_rate=0.4, one_view_rate=0.15)
    assert len(studies) == 120
    assert sum(s.label == "fracture" for s in studies) == 48
    one_view = [s for s in studies if len(s.views) == 1]
    assert len(one_view) == 18
    assert {next(iter(s.views)) for s in one_view} == {"pa", "lateral"}
    for s in studies:
        assert (s.label == "fracture") == bool(s.fracture_views) == bool(s.ao_classification)
        assert set(s.fracture_views) <= set(s.views)
    fractured = [s for s in studies if s.label == "fracture"]
    assert {s.fracture_views for s in fractured} >= {("pa", "lateral"), ("pa",), ("lateral",)}
    kinds = {code for s in fractured for code in s.ao_classification.split("; ")}
    assert kinds == {"23r-M/3.1", "23r-M/2.1", "23u-E/7"}
    assert {s.laterality for s in studies} == {"L", "R"}
    casts = {label: np.mean([s.cast for s in studies if s.label == label]) for label in ("normal", "fracture")}
    assert all(0.08 < rate < 0.45 for rate in casts.values()), casts  # a confounder in both classes
    again = synthetic_wrist_studies(120, seed=2, size=32, fracture_rate=0.4, one_view_rate=0.15, workers=2)
    assert [a.views.keys() for a in studies] == [b.views.keys() for b in again]  # two processes, the same studies
    assert all(np.array_equal(a.views[v], b.views[v]) for a, b in zip(studies, again, strict=True) for v in a.views)


def test_default_visibility_of_fractures() -> None:
    rng = np.random.default_rng(0)
    shown = Counter(synthetic_wrist_study(rng, fractured=True, size=16).fracture_views for _ in range(400))
    share = {pattern: count / 400 for pattern, count in shown.items()}
    assert share[("pa", "lateral")] == pytest.approx(0.6, abs=0.07)
    assert share[("pa",)] == pytest.approx(0.25, abs=0.06)
    assert share[("lateral",)] == pytest.approx(0.15, abs=0.05)


def test_pa_only_fractures_leave_the_lateral_like_a_normal_one() -> None:
    studies = synthetic_wrist_studies(300, seed=4, size=32, fracture_rate=0.5, one_view_rate=0.0)
    normal = [s.views["lateral"].astype(float) for s in studies if s.label == "normal"]
    pa_only = [s.views["lateral"].astype(float) for s in studies if s.fracture_views == ("pa",)]
    assert len(pa_only) >= 20
    average = np.mean(normal, axis=0)
    for statistic in (np.mean, np.std, lambda image: np.abs(image - average).mean()):
        usual = [statistic(image) for image in normal]
        assert abs(np.mean([statistic(image) for image in pa_only]) - np.mean(usual)) < 0.25 * np.std(usual)


def test_write_wrist_studies_in_the_graz_layout(tmp_path: Path) -> None:
    studies = synthetic_wrist_studies(12, seed=5, size=48, fracture_rate=0.5, one_view_rate=0.25)
    table = write_wrist_studies(studies, tmp_path / "graz", seed=1)
    assert table == tmp_path / "graz" / "dataset.csv"
    raw = table.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf" + b",".join(c.encode() for c in GRAZ_COLUMNS) + b"\r\n")
    with table.open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == sum(len(s.views) for s in studies)
    files = {p.stem for p in (tmp_path / "graz" / "images").glob("*.png")}
    assert files == {row["filestem"] for row in rows}

    seen: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        match = STEM.match(row["filestem"])
        assert match, row["filestem"]
        patient, timehash, number, side, projection, sex, age = match.groups()
        assert int(patient) == int(row["patient_id"]) and int(number) == int(row["study_number"]) == 1
        assert int(timehash) == int(row["timehash"]) and (side, projection, sex) == (
            row["laterality"],
            row["projection"],
            row["gender"],
        )
        assert int(age) == int(float(row["age"])) and row["pixel_spacing"] == "0.144"
        seen.setdefault(row["patient_id"], []).append(row)
    for k, (s, images) in enumerate(zip(studies, seen.values(), strict=True), start=1):
        assert [r["patient_id"] for r in images] == [str(k)] * len(s.views)
        views = [WRIST_VIEWS[int(r["projection"]) - 1] for r in images]
        assert views == list(s.views)
        assert [r["fracture_visible"] == "1" for r in images] == [v in s.fracture_views for v in views]
        assert {r["ao_classification"] for r in images} == {s.ao_classification}
        assert {r["cast"] for r in images} == {"1" if s.cast else ""}
    first = Image.open(tmp_path / "graz" / "images" / f"{rows[0]['filestem']}.png")
    np.testing.assert_array_equal(np.asarray(first), studies[0].views[WRIST_VIEWS[int(rows[0]["projection"]) - 1]])
    again = write_wrist_studies(studies, tmp_path / "again", seed=1)
    assert again.read_bytes() == raw


def test_fractures_are_learnable_but_not_trivial() -> None:
    """A logistic regression on 16 x 16 pixels of both views (zeros for a missing view; left wrists mirrored to
    the right, as a reader would) separates held-out studies above chance but far from perfectly: positioning,
    anatomy and exposure vary, and many fractures are subtle."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    studies = synthetic_wrist_studies(1000, seed=7, size=64, fracture_rate=0.5)

    def pixels(s: WristStudy, view: str) -> np.ndarray:
        image = s.views.get(view, np.zeros((64, 64), np.uint8)).astype(float) / 255.0
        image = image[:, ::-1] if s.laterality == "L" else image
        return image.reshape(16, 4, 16, 4).mean(axis=(1, 3)).ravel()

    X = np.stack([np.concatenate([pixels(s, v) for v in WRIST_VIEWS]) for s in studies])
    y = np.array([s.label == "fracture" for s in studies])
    train, test = slice(0, 700), slice(700, None)
    scaler = StandardScaler().fit(X[train])
    model = LogisticRegression(C=1.0, max_iter=3000).fit(scaler.transform(X[train]), y[train])
    auc = roc_auc_score(y[test], model.predict_proba(scaler.transform(X[test]))[:, 1])
    assert 0.7 < auc < 0.95, auc
