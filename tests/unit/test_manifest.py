from __future__ import annotations

import pandas as pd
import pytest

from care_companion.data.manifest import (
    COLUMNS,
    Manifest,
    load_manifest,
    manifest_version,
    study_counts,
    study_kinds,
    study_table,
    view_column,
)
from care_companion.errors import DataError
from care_companion.storage import LocalStore


def _frame() -> pd.DataFrame:
    rows = [
        {c: f"{c}-{i}" for c in COLUMNS} | {"width": 100, "height": 100, "bytes": 10, "patient_id": None}
        for i in range(5)
    ]
    return pd.DataFrame(rows)


def test_version_is_content_hash_independent_of_order_and_paths():
    frame = _frame()
    v = manifest_version(frame)
    assert v.startswith("v-") and len(v) == 14
    shuffled = frame.sample(frac=1.0, random_state=0)
    assert manifest_version(shuffled) == v
    moved = frame.assign(path=lambda f: "elsewhere/" + f["path"])
    assert manifest_version(moved) == v


def test_version_changes_with_labels_splits_or_images():
    frame = _frame()
    v = manifest_version(frame)
    for column in ("label", "split", "pixel_sha256", "source"):
        changed = frame.copy()
        changed.loc[0, column] = "other"
        assert manifest_version(changed) != v, column
    assert Manifest(task="chest", frame=frame).version == v


def test_study_columns_count_in_the_version_only_when_set(tmp_path):
    frame = _frame().drop(columns=["study_id", "view"])
    v = manifest_version(frame)
    assert manifest_version(frame.assign(study_id="", view="")) == v  # chest manifests keep their versions
    assert manifest_version(frame.assign(study_id="", view=["pa"] * 5)) != v
    with_studies = frame.assign(study_id=["s1", "s1", "", "", ""], view="")
    assert manifest_version(with_studies) != v
    # an older manifest without the columns loads with them empty, and keeps its version
    store = LocalStore(tmp_path)
    store.put_bytes("datasets/chest/versions/v-old/manifest.csv", frame.to_csv(index=False).encode())
    store.put_bytes("datasets/chest/LATEST", b"v-old")
    loaded = load_manifest(store, "chest").frame
    assert (loaded["study_id"] == "").all() and (loaded["view"] == "").all()
    assert manifest_version(loaded) == v


def _studies() -> pd.DataFrame:
    frame = _frame()
    frame["patient_id"] = ["p1", "p1", "p2", "p2", "p3"]
    frame["label"] = ["fracture", "fracture", "normal", "normal", "normal"]
    frame["split"] = ["train", "train", "val", "val", "test"]
    frame["study_id"] = ["s1", "s1", "s2", "s2", ""]
    frame["view"] = ["lateral", "pa", "pa", "pa", ""]
    return frame


def test_study_table_indexes_each_view():
    table = study_table(_studies(), ["pa", "lateral"])
    assert list(table["study"]) == ["s1", "s2", "key-4"]
    assert list(table[view_column("pa")]) == [1, 2, 4]  # an image without a view is the first view
    assert list(table[view_column("lateral")]) == [0, -1, -1]
    assert list(table["extra_images"]) == [0, 1, 0]  # s2's second PA is left out
    assert list(table["label"]) == ["fracture", "normal", "normal"] and list(table["patient_id"]) == ["p1", "p2", "p3"]
    assert list(study_kinds(table, ["pa", "lateral"])) == ["pa+lateral", "pa", "pa"]
    counts = study_counts(_studies(), ["pa", "lateral"])
    assert counts["train"] == {"label:fracture": 1, "views:pa+lateral": 1, "images": 2}
    assert counts["val"] == {"label:normal": 1, "views:pa": 1, "images": 2}
    # positions, whatever the frame's index
    shuffled = _studies().set_axis([10, 11, 12, 13, 14])
    assert list(study_table(shuffled, ["pa", "lateral"])[view_column("pa")]) == [1, 2, 4]


def test_study_table_refuses_disagreeing_studies():
    frame = _studies()
    frame.loc[1, "split"] = "val"
    with pytest.raises(DataError, match=r"study s1 has images with different split"):
        study_table(frame, ["pa", "lateral"])
    frame = _studies()
    frame.loc[3, "patient_id"] = None
    with pytest.raises(DataError, match=r"study s2 has images with different patient"):
        study_table(frame, ["pa", "lateral"])
    with pytest.raises(DataError, match="unknown views"):
        study_table(_studies(), ["frontal"])
