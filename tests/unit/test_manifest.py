from __future__ import annotations

import pandas as pd

from care_companion.data.manifest import COLUMNS, Manifest, manifest_version


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
