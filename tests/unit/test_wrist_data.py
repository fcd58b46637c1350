"""Wrist data: GRAZPEDWRI-DX study pairing on the real table, imports with stand-in images, FracAtlas, fetch."""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from care_companion.cli.main import app
from care_companion.config import Settings, get_settings
from care_companion.data.chest import import_chest
from care_companion.data.figshare import FIGSHARE_API
from care_companion.data.manifest import load_manifest, study_kinds, study_table, view_column
from care_companion.data.rejects import NO_REJECTS, RejectSources
from care_companion.data.splits import grouped_stratified_split
from care_companion.data.synthetic_chest import write_synthetic_chest_tree
from care_companion.data.wrist import (
    FIGSHARE_ARTICLE_ID,
    FRACATLAS_COLUMNS,
    GRAZ_COLUMNS,
    fetch_wrist,
    graz_studies,
    import_fracatlas,
    import_wrist,
    read_table,
)
from care_companion.errors import ConfigError, DataError
from care_companion.storage import open_store
from care_companion.tasks import WRIST
from tests.conftest import shared_path
from tests.unit.test_figshare import FakeFigshare

# patients whose images the stand-in tree holds: the first 40, plus one with two PA images in a study
# (0190), one with an "other" projection beside PA and lateral (0224) and one with only "other" views (0578)
STAND_IN_PATIENTS = [f"{i:04d}" for i in range(1, 41)] + ["0190", "0224", "0578"]
DUPLICATE_LATERAL = "0001_1297860435_01_WRI-L2_M014"  # same pixels as its study's PA: dropped, PA kept
CORRUPT_PA = "0003_0662359226_01_WRI-R1_M011"  # unreadable: the study keeps its lateral
WITHHELD = "0005_0073601967_01_WRI-R2_F014"  # not on disk: reported missing, the study keeps its PA


@pytest.fixture(scope="module")
def graz_table() -> pd.DataFrame:
    return read_table(shared_path("grazpedwri-dx", "dataset.csv"), GRAZ_COLUMNS)


def _stand_in(stem: str, size: int = 64) -> np.ndarray:
    """A small image unique to ``stem``: seeded noise over a diagonal stripe pattern."""
    rng = np.random.default_rng(zlib.crc32(stem.encode()))
    yy, xx = np.mgrid[:size, :size]
    stripes = ((xx + yy) // 8 % 2) * 120
    return (stripes + rng.integers(0, 120, (size, size))).astype(np.uint8)


@pytest.fixture(scope="module")
def graz_src(graz_table: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real dataset.csv plus stand-in PNGs for the chosen patients' stems, spread over two subfolders."""
    src = tmp_path_factory.mktemp("graz")
    shutil.copy(shared_path("grazpedwri-dx", "dataset.csv"), src / "dataset.csv")
    stems = sorted(graz_table.loc[graz_table["filestem"].str[:4].isin(STAND_IN_PATIENTS), "filestem"])
    assert WITHHELD in stems
    for i, stem in enumerate(stems):
        if stem == WITHHELD:
            continue
        folder = src / ("images_part1" if i % 2 else "more/images_part2")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{stem}.png"
        if stem == CORRUPT_PA:
            path.write_bytes(b"\x89PNG\r\n\x1a\n not really")
        elif stem == DUPLICATE_LATERAL:
            Image.fromarray(_stand_in(DUPLICATE_LATERAL.replace("L2", "L1").replace("1297860435", "1297860395"))).save(
                path
            )
        else:
            Image.fromarray(_stand_in(stem)).save(path)
    return src


def test_pairing_on_the_real_table(graz_table: pd.DataFrame):
    images, summary = graz_studies(graz_table)
    assert summary.table_images == 20327 and summary.unparsed_stems == 0 and summary.stem_mismatches == 0
    assert summary.other_projection_images == 93 and summary.other_only_studies == 10
    assert (summary.studies, summary.paired, summary.pa_only, summary.lateral_only) == (10832, 9296, 730, 806)
    assert (summary.several_pa, summary.several_lateral, summary.extra_images_left_out) == (59, 46, 106)
    assert len(images) == 2 * 9296 + 730 + 806
    assert not images.duplicated(["study_id", "view"]).any()
    assert set(images["view"]) == {"pa", "lateral"}
    # a study belongs to one patient and carries the file stem's patient, study number and side
    first = images.iloc[0]
    assert (first["filestem"], first["patient_id"], first["study_id"], first["view"]) == (
        "0001_1297860395_01_WRI-L1_M014",
        "grazpedwri:0001",
        "grazpedwri:0001-01-L",
        "pa",
    )
    assert (images.groupby("study_id")["patient_id"].nunique() == 1).all()
    # both wrists of one visit are two studies
    assert {"grazpedwri:0081-01-L", "grazpedwri:0081-01-R"} <= set(images["study_id"])
    # several PA images: the earliest (by time hash) is kept
    assert images.loc[images["study_id"] == "grazpedwri:0190-03-R", "filestem"].tolist() == [
        "0190_0856110939_03_WRI-R1_M013"
    ]
    # "other" projections are left out, and studies with nothing else with them
    assert not images["filestem"].str.contains(r"WRI-[LR]3_").any()
    assert "grazpedwri:0578-02-L" not in set(images["study_id"])


def test_label_rule_on_known_studies(graz_table: pd.DataFrame):
    images, summary = graz_studies(graz_table)
    label = images.drop_duplicates("study_id").set_index("study_id")["label"]
    assert label["grazpedwri:0001-01-L"] == "fracture"  # visible on the lateral only: the whole study
    assert label["grazpedwri:0002-01-R"] == "fracture"  # AO code, no image marked visible (and uncertain)
    assert label["grazpedwri:0010-01-L"] == "fracture"  # visible, no AO code
    assert label["grazpedwri:0004-01-L"] == "normal"  # neither
    assert (summary.fracture, summary.normal) == (7639, 3193)
    assert (summary.fracture_by_ao_only, summary.visible_without_ao, summary.uncertain) == (96, 97, 285)
    assert images.loc[images["study_id"] == "grazpedwri:0002-01-R", "uncertain"].all()
    kept, dropped = graz_studies(graz_table, drop_uncertain=True)
    assert kept["study_id"].nunique() == 10832 - 285 and dropped.uncertain_dropped
    assert not kept["uncertain"].any()


def test_patient_grouped_splits_on_the_real_table(graz_table: pd.DataFrame):
    images, _ = graz_studies(graz_table)
    images["split"] = grouped_stratified_split(list(images["label"]), list(images["patient_id"]), seed=3)
    assert (images.groupby("patient_id")["split"].nunique() == 1).all()
    assert (images.groupby("study_id")["split"].nunique() == 1).all()
    shares = images["split"].value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.80, abs=0.01) and shares["test"] == pytest.approx(0.10, abs=0.01)
    assert shares["val"] == pytest.approx(0.08, abs=0.01) and shares["canary"] == pytest.approx(0.01, abs=0.005)


def _expected_kinds(graz_table: pd.DataFrame) -> dict[str, str]:
    """Views each stand-in study should end with: the table's choice less the dropped, broken and withheld."""
    images, _ = graz_studies(graz_table)
    mine = images[images["filestem"].str[:4].isin(STAND_IN_PATIENTS)]
    mine = mine[~mine["filestem"].isin([DUPLICATE_LATERAL, CORRUPT_PA, WITHHELD])]
    return {s: "+".join(v for v in ("pa", "lateral") if v in set(g["view"])) for s, g in mine.groupby("study_id")}


def test_import_wrist_with_stand_in_images(graz_src: Path, graz_table: pd.DataFrame, tmp_path: Path):
    store = open_store(str(tmp_path / "store"))
    result = import_wrist(graz_src, store, seed=5, rejects=NO_REJECTS, workers=1)
    notes = result.details["grazpedwri-dx"]
    images, _ = graz_studies(graz_table)
    on_disk = images["filestem"].str[:4].isin(STAND_IN_PATIENTS) & (images["filestem"] != WITHHELD)
    assert notes["missing_images"] == len(images) - int(on_disk.sum())
    assert len(notes["missing_examples"]) == 10 and notes["unlisted_images"] == 0
    assert [s.path.rsplit("/", 1)[-1] for s in result.skipped] == [f"{CORRUPT_PA}.png"]
    assert [Path(d["path"]).stem for d in result.duplicates] == [DUPLICATE_LATERAL]

    manifest = load_manifest(store, "wrist")
    assert manifest.version == result.version
    frame = manifest.frame
    table = study_table(frame, WRIST.views)
    kinds = dict(zip(table["study"], study_kinds(table, WRIST.views), strict=True))
    assert kinds == _expected_kinds(graz_table)
    assert kinds["grazpedwri:0001-01-L"] == "pa" and kinds["grazpedwri:0003-01-R"] == "lateral"
    assert (table["extra_images"] == 0).all()
    # each view index points at that study's image of that view, and studies keep the table's label
    labels = images.drop_duplicates("study_id").set_index("study_id")["label"]
    for view in WRIST.views:
        rows = table[table[view_column(view)] >= 0]
        picked = frame.iloc[rows[view_column(view)].to_numpy()]
        assert (picked["view"].to_numpy() == view).all()
        assert (picked["study_id"].to_numpy() == rows["study"].to_numpy()).all()
    assert (table["label"].to_numpy() == table["study"].map(labels).to_numpy()).all()
    assert (frame.groupby("patient_id")["split"].nunique() == 1).all()
    assert "0190_0856110939_03_WRI-R1_M013" in "".join(frame["path"])
    assert "0190_0856110998_03_WRI-R1_M013" not in "".join(frame["path"])
    counts = {k: sum(row.get(k, 0) for row in result.studies.values()) for k in ("views:pa+lateral", "images")}
    assert counts == {"views:pa+lateral": sum(k == "pa+lateral" for k in kinds.values()), "images": len(frame)}
    report = json.loads(store.get_bytes(result.report_key))
    assert report["details"]["grazpedwri-dx"]["paired"] == 9296


def test_import_wrist_adds_fracatlas_and_needs_images(graz_src: Path, tmp_path: Path):
    fracatlas = shared_path("fracatlas")
    store = open_store(str(tmp_path / "store"))
    result = import_wrist(
        graz_src, store, seed=5, fracatlas=fracatlas, region="hand", limit=20, rejects=NO_REJECTS, other_regions=[]
    )
    assert set(result.counts) == {"grazpedwri-dx", "fracatlas"}
    assert result.details["fracatlas"]["kept"] == 20
    table = study_table(load_manifest(store, "wrist").frame, WRIST.views)
    assert (table["source"] == "fracatlas").sum() == sum(result.counts["fracatlas"].values())

    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(graz_src / "dataset.csv", empty / "dataset.csv")
    with pytest.raises(DataError, match=r"none of the .* images named in dataset.csv"):
        import_wrist(empty, store, seed=5, workers=1)
    with pytest.raises(DataError, match="label table not found"):
        import_wrist(tmp_path, store, seed=5, workers=1)


def test_import_fracatlas_hand_subset(tmp_path: Path):
    src = shared_path("fracatlas")
    table = read_table(src / "dataset.csv", FRACATLAS_COLUMNS).set_index("image_id")
    store = open_store(str(tmp_path / "store"))
    result = import_fracatlas(src, store, seed=0, region="hand", limit=40, rejects=NO_REJECTS, other_regions=[])
    assert result.n_images + len(result.skipped) + len(result.duplicates) == 40
    notes = result.details["fracatlas"]
    assert (
        notes["region"] == "hand" and notes["kept"] == 40 and notes["missing_images"] == notes["unlisted_images"] == 0
    )
    frame = load_manifest(store, "wrist").frame
    rows = table.loc[[Path(p).name for p in frame["path"]]]
    assert (rows["hand"] == "1").all() and (rows["mixed"] == "0").all()
    assert (frame["label"].to_numpy() == np.where(rows["fractured"] == "1", "fracture", "normal")).all()
    lateral = (rows["lateral"] == "1") & (rows["frontal"] == "0")
    assert (frame["view"].to_numpy() == np.where(lateral, "lateral", "pa")).all()
    assert (frame["study_id"] == "").all() and frame["patient_id"].is_unique
    studies = study_table(frame, WRIST.views)
    assert len(studies) == len(frame) and set(study_kinds(studies, WRIST.views)) <= {"pa", "lateral"}
    with pytest.raises(ConfigError, match="unknown FracAtlas region"):
        import_fracatlas(src, store, seed=0, region="elbow")


def test_an_import_reads_fracatlas_once_for_both_its_region_and_the_other_regions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The table and the image folder are read once, for the hand films and the other regions' films alike."""
    import care_companion.data.wrist as wrist

    reads: list[str] = []
    for name in ("read_table", "images_by_stem"):
        real = getattr(wrist, name)
        monkeypatch.setattr(wrist, name, lambda *a, _real=real, _name=name, **k: reads.append(_name) or _real(*a, **k))
    items, _ = wrist.fracatlas_items(shared_path("fracatlas"), region="hand", limit=5)
    assert len(items) == 5 and sorted(reads) == ["images_by_stem", "read_table"]
    reads.clear()
    store = open_store(str(tmp_path / "store"))
    result = import_fracatlas(
        shared_path("fracatlas"), store, seed=0, region="hand", limit=5, other_regions_max=2, rejects=NO_REJECTS,
        workers=1,
    )  # fmt: skip
    assert result.details["fracatlas_other_regions"]["regions"] == {"leg": 2, "hip": 2, "shoulder": 2}
    assert sorted(reads) == ["images_by_stem", "read_table"]


def test_wrist_import_teaches_unknown_other_regions_chest_films_and_photos(tmp_path: Path):
    """By default the wrist data set's reject class gets FracAtlas's other regions, the chest films already in the
    store and generated non-X-rays, as one- and two-view studies that keep their images in one split."""
    src = shared_path("fracatlas")
    table = read_table(src / "dataset.csv", FRACATLAS_COLUMNS).set_index("image_id")
    store = open_store(str(tmp_path / "store"))
    chest_src = tmp_path / "chest"
    write_synthetic_chest_tree(chest_src, 4, seed=1, size=96, include_unknown=False)
    import_chest([chest_src], store, seed=1, rejects=NO_REJECTS, workers=1)

    result = import_fracatlas(
        src, store, seed=0, region="hand", limit=30, other_regions_max=6, rejects=RejectSources(non_xray=9), workers=1
    )
    assert result.counts["generated-non-xray"] == {"unknown": 9}
    assert result.counts["other-task:chest"] == {"unknown": 12}
    for region in ("leg", "hip", "shoulder"):
        assert result.counts[f"fracatlas-{region}"] == {"unknown": 6}
    assert result.details["fracatlas_other_regions"]["regions"] == {"leg": 6, "hip": 6, "shoulder": 6}
    frame = load_manifest(store, "wrist").frame
    unknown = frame[frame["label"] == "unknown"]
    shown = table.loc[[Path(p).name for p in unknown.loc[unknown["source"].str.startswith("fracatlas-"), "path"]]]
    assert (shown["hand"] == "0").all(), "an other-region film shows a hand"
    studies = study_table(unknown, WRIST.views)
    kinds = study_kinds(studies, WRIST.views)
    assert {"pa+lateral", "pa", "lateral"} <= set(kinds)
    assert (unknown.groupby("study_id")["split"].nunique() == 1).all()
    assert set(frame.loc[frame["label"] != "unknown", "source"]) == {"fracatlas"}

    # the chest import, run again, learns those other regions' radiographs too, but not the wrist set's chest
    # films (they are chest films) nor its generated images
    chest = import_chest([chest_src], store, seed=1, rejects=RejectSources(non_xray=0, other_tasks_max=10), workers=1)
    assert chest.counts["other-task:wrist"] == {"unknown": 10}
    assert chest.counts["other-task:wrist:other-body-parts"] == {"unknown": 10}
    chest_frame = load_manifest(store, "chest").frame
    taught = chest_frame.loc[chest_frame["source"] == "other-task:wrist:other-body-parts", "pixel_sha256"]
    regions = unknown.loc[unknown["source"].str.startswith("fracatlas-"), "pixel_sha256"]
    assert set(taught) <= set(regions)

    only_leg = import_fracatlas(
        src,
        open_store(str(tmp_path / "s2")),
        seed=0,
        region="hand",
        limit=10,
        other_regions=["leg"],
        other_regions_max=4,
        rejects=NO_REJECTS,
        workers=1,
    )
    assert {k for k in only_leg.counts if k.startswith("fracatlas-")} == {"fracatlas-leg"}
    with pytest.raises(ConfigError, match="unknown FracAtlas regions"):
        import_fracatlas(src, store, seed=0, region="hand", other_regions=["elbow"])


def test_cli_imports_and_shows_fracatlas(cli_env: Path, monkeypatch: pytest.MonkeyPatch):
    src = shared_path("fracatlas")
    runner = CliRunner()
    args = ["data", "import", "fracatlas", str(src), "--region", "hand", "--limit", "30", "--workers", "1"]
    imported = runner.invoke(app, args, catch_exceptions=False)
    assert imported.exit_code == 0, imported.output
    assert "wrist data set v-" in imported.output and "lateral only" in imported.output
    said = " ".join(imported.output.split())
    assert "reject class 'unknown' (not a wrist radiograph): " in said
    assert "from fracatlas-leg" in said and "from generated-non-xray" in said
    shown = runner.invoke(app, ["data", "show", "wrist"], catch_exceptions=False)
    assert shown.exit_code == 0 and "pa only" in shown.output and "fracture" in shown.output
    for name in ("CARE_FIGSHARE_TOKEN", "FIGSHARE_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    fetched = runner.invoke(app, ["data", "fetch", "wrist", "--target", str(cli_env / "dl")], catch_exceptions=False)
    assert fetched.exit_code == 2 and "figshare.com/account/applications" in fetched.output


# --- Figshare download (the client itself: tests/unit/test_figshare.py) ---------------------------------------


def test_fetch_needs_a_token(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"figshare\.com/account/applications.*figshare\.14825193"):
        fetch_wrist(tmp_path / "dl", settings=Settings(figshare_token=None))
    assert not (tmp_path / "dl").exists()


def test_fetch_asks_for_the_grazpedwri_article(tmp_path: Path):
    fake = FakeFigshare({"dataset.csv": b"filestem,patient_id\n"})
    target = tmp_path / "dl"
    assert fetch_wrist(target, client=fake.client(), settings=Settings(figshare_token="secret-token")) == target
    assert str(fake.requests[0].url).startswith(f"{FIGSHARE_API}/articles/{FIGSHARE_ARTICLE_ID}/files")
    assert (target / "dataset.csv").is_file()
