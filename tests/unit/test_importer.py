from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from care_companion.data.chest import import_chest
from care_companion.data.importer import ImportItem, import_images
from care_companion.data.manifest import load_manifest, study_table
from care_companion.data.rejects import RejectSources
from care_companion.errors import DataError
from care_companion.storage import open_store
from care_companion.tasks import WRIST
from tests.conftest import shared_path


def _write(path: Path, image: np.ndarray, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format=fmt)


def _tree(root: Path) -> None:
    rng = np.random.default_rng(0)
    for label in ("normal", "pneumonia", "tuberculosis"):
        for p in range(12):
            for k in range(2):
                img = rng.integers(0, 255, size=(80 + p, 90), dtype=np.uint8)
                _write(root / "train" / label.upper() / f"synth-patient{p:04d}{label[0]}_img{k}.png", img)
    # an exact duplicate, a re-encoded duplicate (same pixels, other file), broken and tiny files
    dup = root / "train" / "NORMAL" / "synth-patient0000n_img0.png"
    (root / "test" / "normal").mkdir(parents=True)
    (root / "test" / "normal" / "copy.png").write_bytes(dup.read_bytes())
    pixels = np.asarray(Image.open(dup))
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    (root / "test" / "normal" / "recoded.png").write_bytes(buf.getvalue())
    (root / "test" / "normal" / "empty.png").write_bytes(b"")
    (root / "test" / "normal" / "cut.png").write_bytes(dup.read_bytes()[:200])
    _write(root / "test" / "pneumonia" / "tiny.png", np.zeros((20, 20), np.uint8))
    (root / "test" / "pneumonia" / "text.jpg").write_bytes(b"not an image at all")


def test_import_validates_dedups_splits_and_versions(tmp_path: Path):
    src = tmp_path / "src"
    _tree(src)
    store = open_store(str(tmp_path / "store"))
    result = import_chest([src], store, seed=1, rejects=RejectSources(non_xray=10), workers=1)
    assert result.n_images == 3 * 24 + 10
    reasons = {s.path: s.reason for s in result.skipped}
    assert reasons == {
        "test/normal/empty.png": "empty",
        "test/normal/cut.png": "truncated",
        "test/pneumonia/tiny.png": "too_small",
        "test/pneumonia/text.jpg": "not_an_image",
    }
    copies = {"src/test/normal/copy.png", "src/test/normal/recoded.png", "src/train/NORMAL/synth-patient0000n_img0.png"}
    assert len(result.duplicates) == 2
    assert {d["path"] for d in result.duplicates} | {result.duplicates[0]["duplicate_of"]} == copies
    assert len({d["duplicate_of"] for d in result.duplicates}) == 1
    manifest = load_manifest(store, "chest")
    assert manifest.version == result.version
    frame = manifest.frame
    assert set(frame["label"]) == {"normal", "pneumonia", "tuberculosis", "unknown"}
    assert (frame["source"] == "generated-non-xray").sum() == 10
    # both films of a patient land in the same split
    patients = frame.dropna(subset=["patient_id"]).groupby("patient_id")["split"].nunique()
    assert (patients == 1).all() and len(patients) == 36
    assert all(store.exists(k) for k in frame["key"])

    again = import_chest(
        [src], open_store(str(tmp_path / "store2")), seed=1, rejects=RejectSources(non_xray=10), workers=2
    )
    assert again.version == result.version
    other_seed = import_chest(
        [src], open_store(str(tmp_path / "store3")), seed=2, rejects=RejectSources(non_xray=10), workers=1
    )
    assert other_seed.version != result.version


def test_import_bad_inputs_are_all_reported(tmp_path: Path):
    bad = shared_path("bad-inputs")
    src = tmp_path / "src" / "normal"
    src.mkdir(parents=True)
    files = sorted(bad.iterdir())
    for f in files:
        (src / f.name).write_bytes(f.read_bytes())
    _write(src / "good.png", np.random.default_rng(0).integers(0, 255, (128, 128), dtype=np.uint8))
    result = import_chest(
        [tmp_path / "src"], open_store(str(tmp_path / "store")), seed=0, rejects=RejectSources(non_xray=0), workers=1
    )
    assert result.n_images == 1
    assert len(result.skipped) == len(files)
    assert {s.reason for s in result.skipped} == {"truncated"}


def test_non_chest_folders_become_the_unknown_class(tmp_path: Path):
    src = tmp_path / "src"
    _tree(src)
    hands = tmp_path / "hands" / "images"
    rng = np.random.default_rng(5)
    for i in range(7):
        _write(hands / f"IMG{i:04d}.jpg", rng.integers(0, 255, (100, 90), dtype=np.uint8), fmt="JPEG")
    store = open_store(str(tmp_path / "store"))
    result = import_chest(
        [src], store, seed=1, rejects=RejectSources(non_xray=0, folders=(hands,), folders_max=5), workers=1
    )
    assert result.counts["non-chest:images"] == {"unknown": 5}
    again = import_chest(
        [src],
        open_store(str(tmp_path / "s2")),
        seed=1,
        rejects=RejectSources(non_xray=0, folders=(hands,), folders_max=5),
        workers=1,
    )
    assert again.version == result.version


def test_labelled_items_keep_studies_together_and_lose_only_a_duplicated_view(tmp_path: Path):
    rng = np.random.default_rng(3)
    items = []
    for s in range(30):
        pa = rng.integers(0, 255, (70, 70), dtype=np.uint8)
        lateral = pa if s == 0 else rng.integers(0, 255, (70, 70), dtype=np.uint8)
        label = "fracture" if s % 3 == 0 else "normal"
        for view, pixels in (("pa", pa), ("lateral", lateral)):
            items.append(
                ImportItem(
                    source="s", relative=f"{s:02d}-{view}.png", label=label, pixels=pixels, study_id=f"st{s}", view=view
                )
            )
    store = open_store(str(tmp_path / "store"))
    result = import_images(WRIST, [], store, seed=0, items=items, details={"note": 1}, workers=1)
    assert result.duplicates == [{"path": "s/00-lateral.png", "duplicate_of": "s/00-pa.png"}]
    assert result.details == {"note": 1}
    frame = load_manifest(store, "wrist").frame
    assert (frame.groupby("study_id")["split"].nunique() == 1).all()  # no patient ids: grouped by study
    table = study_table(frame, WRIST.views)
    assert len(table) == 30 and (table["view_lateral"] < 0).sum() == 1
    assert sum(row["views:pa+lateral"] for row in result.studies.values() if "views:pa+lateral" in row) == 29
    with pytest.raises(DataError, match="not wrist classes"):
        import_images(WRIST, [], store, seed=0, items=[ImportItem(source="s", relative="x", label="pneumonia")])
