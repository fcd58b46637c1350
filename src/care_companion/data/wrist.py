"""Wrist radiographs: GRAZPEDWRI-DX two-view studies, FracAtlas single views, and the Figshare download.

GRAZPEDWRI-DX (Nagy et al., Scientific Data 2022, CC BY 4.0) ships ``dataset.csv`` (one row per image) and
PNG images named by its ``filestem`` column, e.g. ``0001_1297860395_01_WRI-L1_M014``: patient 0001, time
hash, study 01, wrist left, projection 1, male aged 14. The stem agrees with the ``patient_id``,
``study_number``, ``laterality``, ``projection`` and ``gender`` columns on all 20,327 rows of the real table;
the stem is what images are found by, so it is what is used (disagreements are counted in the report).

- **Study** = patient + study number + laterality (both wrists of one visit are two studies: 143 visits).
  Projection 1 is the PA view, 2 the lateral; projection 3 ("other", 93 images) is left out, and so are the
  10 studies that have nothing else. Of the remaining 10,832 studies 9,296 have both views, 730 only a PA
  and 806 only a lateral; one-view studies stay one-view. A study with several PA (59) or several lateral
  (46) images keeps the earliest by time hash (no ties in the table); the others are counted and left out.
- **Label**: a study is ``fracture`` when any of its images (all projections) has ``fracture_visible`` = 1
  or it has an ``ao_classification``; otherwise ``normal``. In the real table 7,446 studies have both,
  97 a visible fracture without an AO code, and 96 an AO code without any image marked visible (49 of them in
  a cast, 54 follow-ups, and subtle types such as Salter-Harris I ``23r-E/1`` or scaphoid ``72B``): these
  are clinically diagnosed fractures, so they are not taught as normal (sensitivity comes first), at the
  price of about 1% of positive studies whose images may not show the break. 3,193 studies are normal:
  7,639 of 10,832 studies (70.5%; 14,214 of 20,128 images) are fractures.
- **Uncertain diagnoses** (``diagnosis_uncertain`` on any image: 285 studies, 186 of them labelled
  normal) are kept with their label by default and listed in the import report; ``drop_uncertain`` leaves
  them out.

FracAtlas (Abedeen et al., Scientific Data 2023, CC BY 4.0) has single radiographs with region and view
flags and a ``fractured`` label. Every image is a one-view study: ``lateral`` when flagged lateral and not
frontal, else ``pa`` (frontal films; oblique films, a rotated PA; and films showing frontal and lateral side
by side, which are mostly multi-scan composites). The set has no patient ids, so each image is its own
patient: films of one patient may land in different splits, a limitation of the source. ``region="hand"``
keeps hand films (``hand`` = 1) that are not ``mixed``: the 174 mixed hand films are whole-arm or trunk
films whose fracture may be at the shoulder, leaving 813 hand films (249 fractured).

The wrist task's reject class ``unknown`` ("not a wrist radiograph") gets, by default, FracAtlas films of the
other regions (leg, hip, shoulder) when a region is kept, the chest films already imported, and generated
photos and scenes (:mod:`care_companion.data.rejects`), as one- and two-view studies.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from care_companion.config import Settings
from care_companion.data.figshare import fetch_article
from care_companion.data.folders import image_files
from care_companion.data.importer import ImportItem, ImportResult, import_images
from care_companion.data.rejects import RejectSources, as_studies, reject_items, sample_indices
from care_companion.errors import ConfigError, DataError
from care_companion.imaging.decode import DEFAULT_LIMITS, DecodeLimits
from care_companion.storage.base import ObjectStore
from care_companion.tasks import WRIST

GRAZ_SOURCE = "grazpedwri-dx"
GRAZ_ORIGIN = "grazpedwri"  # as data.patients names it
FRACATLAS_SOURCE = "fracatlas"
TABLE_FILE = "dataset.csv"
PROJECTIONS: dict[str, str] = {"1": "pa", "2": "lateral"}
GRAZ_COLUMNS = [
    "filestem",
    "patient_id",
    "study_number",
    "timehash",
    "laterality",
    "projection",
    "ao_classification",
    "diagnosis_uncertain",
    "fracture_visible",
]
FRACATLAS_COLUMNS = ["image_id", "hand", "mixed", "fractured", "frontal", "lateral", "oblique"]
REGIONS = ("hand", "leg", "hip", "shoulder")
# At most this many films of each other region join 'unknown'. Leg films are mostly feet, which look like hands:
# with 300 of FracAtlas's 1,395 the full-recipe wrist model gave a finding to 21.5% of unseen leg films.
OTHER_REGIONS_MAX = 1000
_STEM = re.compile(
    r"^(?P<patient>\d+)_(?P<timehash>\d+)_(?P<study>\d+)_WRI-(?P<side>[LR])(?P<projection>\d)_(?P<sex>[A-Z])\d+$"
)
_EXAMPLES = 10

# GRAZPEDWRI-DX on Figshare: https://doi.org/10.6084/m9.figshare.14825193
FIGSHARE_ARTICLE_ID = 14825193


class GrazSummary(BaseModel):
    """How the GRAZPEDWRI-DX table became studies (counts over the table, before looking for images)."""

    table_images: int
    unparsed_stems: int = Field(description="file stems not of the GRAZPEDWRI-DX form, left out")
    stem_mismatches: int = Field(description="rows whose stem disagrees with their id/study/side/projection columns")
    other_projection_images: int = Field(description="projection 3 ('other') images, left out")
    other_only_studies: int = Field(description="studies with only 'other' projections, left out")
    studies: int
    paired: int
    pa_only: int
    lateral_only: int
    several_pa: int = Field(description="studies with more than one PA image (the earliest is kept)")
    several_lateral: int = Field(description="studies with more than one lateral image (the earliest is kept)")
    extra_images_left_out: int
    fracture: int
    normal: int
    fracture_by_ao_only: int = Field(description="fracture studies with an AO code but no image marked visible")
    visible_without_ao: int = Field(description="fracture studies with a visible fracture but no AO code")
    uncertain: int = Field(description="studies with diagnosis_uncertain on any image")
    uncertain_dropped: bool = False


class FracAtlasSummary(BaseModel):
    """How the FracAtlas table became one-view studies."""

    table_images: int
    region: str | None
    kept: int
    fracture: int
    normal: int
    views: dict[str, int] = Field(description="pa / lateral images kept")
    oblique_as_pa: int
    frontal_and_lateral_as_pa: int
    limit: int | None = None


def read_table(path: Path, required: Iterable[str]) -> pd.DataFrame:
    """A CSV label table as strings (BOM tolerated, blanks as ""), checked for the ``required`` columns."""
    if not path.is_file():
        raise DataError(f"{path}: label table not found")
    try:
        table = pd.read_csv(path, encoding="utf-8-sig", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: not a readable CSV table ({exc})") from exc
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing columns {missing} (found {list(table.columns)})")
    return table


def _flag(values: pd.Series) -> pd.Series:
    """A 1/blank column as booleans."""
    return values.astype(str).str.strip().isin(["1", "1.0", "True", "true"])


def _graz_rows(table: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """Table rows with patient, study, view, time order and flags read from their stems.

    Also returns how many stems could not be parsed (left out) and how many disagree with their columns.
    """
    parts = table["filestem"].str.extract(_STEM)
    parsed = parts["patient"].notna()
    rows, parts = table[parsed].copy(), parts[parsed]
    mismatch = (
        (parts["patient"].astype(int) != pd.to_numeric(rows["patient_id"], errors="coerce"))
        | (parts["study"].astype(int) != pd.to_numeric(rows["study_number"], errors="coerce"))
        | (parts["side"] != rows["laterality"])
        | (parts["projection"] != rows["projection"])
    )
    rows["patient"] = GRAZ_ORIGIN + ":" + parts["patient"]
    rows["study_id"] = GRAZ_ORIGIN + ":" + parts["patient"] + "-" + parts["study"] + "-" + parts["side"]
    rows["view"] = parts["projection"].map(PROJECTIONS).fillna("")
    rows["order"] = parts["timehash"].astype(int)
    rows["fracture"] = _flag(rows["fracture_visible"])
    rows["ao"] = rows["ao_classification"].str.strip() != ""
    rows["uncertain"] = _flag(rows["diagnosis_uncertain"])
    return rows, int((~parsed).sum()), int(mismatch.sum())


def graz_studies(table: pd.DataFrame, *, drop_uncertain: bool = False) -> tuple[pd.DataFrame, GrazSummary]:
    """The images of GRAZPEDWRI-DX studies to import, one PA and one lateral at most per study.

    Returns the kept images (columns ``filestem``, ``patient_id``, ``study_id``, ``view``, ``label``,
    ``uncertain``; sorted by study, PA first) and the counts of how they were chosen (see the module
    docstring for the rules).

    Args:
        table: ``dataset.csv`` read as strings (:func:`read_table`).
        drop_uncertain: leave out studies with ``diagnosis_uncertain`` on any image.
    """
    rows, unparsed, mismatches = _graz_rows(table)
    studies = rows.groupby("study_id")[["fracture", "ao", "uncertain"]].any()

    views = rows[rows["view"] != ""].sort_values(["study_id", "view", "order", "filestem"])
    per_view = views.groupby(["study_id", "view"]).size().unstack(fill_value=0).reindex(columns=["pa", "lateral"])
    per_view = per_view.fillna(0).astype(int)
    kept = views.drop_duplicates(["study_id", "view"]).copy()
    extra = len(views) - len(kept)
    studies = studies.loc[per_view.index]
    studies["label"] = np.where(studies["fracture"] | studies["ao"], "fracture", "normal")
    kept["label"] = kept["study_id"].map(studies["label"])
    kept["uncertain"] = kept["study_id"].map(studies["uncertain"]).astype(bool)
    if drop_uncertain:
        kept = kept[~kept["uncertain"]]
    kept["rank"] = kept["view"].map({"pa": 0, "lateral": 1})
    kept = kept.sort_values(["study_id", "rank"])
    out = kept[["filestem", "patient", "study_id", "view", "label", "uncertain"]].rename(
        columns={"patient": "patient_id"}
    )

    has_pa, has_lateral = per_view["pa"] > 0, per_view["lateral"] > 0
    summary = GrazSummary(
        table_images=len(table),
        unparsed_stems=unparsed,
        stem_mismatches=mismatches,
        other_projection_images=int((rows["view"] == "").sum()),
        other_only_studies=int(rows["study_id"].nunique() - len(per_view)),
        studies=len(per_view),
        paired=int((has_pa & has_lateral).sum()),
        pa_only=int((has_pa & ~has_lateral).sum()),
        lateral_only=int((~has_pa & has_lateral).sum()),
        several_pa=int((per_view["pa"] > 1).sum()),
        several_lateral=int((per_view["lateral"] > 1).sum()),
        extra_images_left_out=extra,
        fracture=int((studies["label"] == "fracture").sum()),
        normal=int((studies["label"] == "normal").sum()),
        fracture_by_ao_only=int((studies["ao"] & ~studies["fracture"]).sum()),
        visible_without_ao=int((studies["fracture"] & ~studies["ao"]).sum()),
        uncertain=int(studies["uncertain"].sum()),
        uncertain_dropped=drop_uncertain,
    )
    return out.reset_index(drop=True), summary


def images_by_stem(root: Path) -> tuple[dict[str, Path], int]:
    """Image files under ``root`` (any layout) by file stem, and how many stems were found more than once.

    A stem found twice keeps the first path in sorted order.
    """
    found: dict[str, Path] = {}
    twice = 0
    for path in image_files(root):
        if path.stem in found:
            twice += 1
        else:
            found[path.stem] = path
    return found, twice


def _locate(
    root: Path,
    stems: pd.Series,
    listed: Iterable[str],
    what: str,
    index: tuple[dict[str, Path], int] | None = None,
) -> tuple[list[Path | None], dict[str, Any]]:
    """Paths of the images named by ``stems`` under ``root`` (``None`` where missing) and what was missing.

    ``listed``: every stem the table names (images under ``root`` named otherwise are counted as unlisted).
    ``index``: :func:`images_by_stem` of ``root`` when already scanned.

    Raises:
        DataError: when none of them is there.
    """
    found, twice = index if index is not None else images_by_stem(root)
    paths = [found.get(stem) for stem in stems]
    missing = [stem for stem, path in zip(stems, paths, strict=True) if path is None]
    if stems.size and len(missing) == len(paths):
        raise DataError(
            f"{root}: none of the {len(paths)} {what} images named in {TABLE_FILE} was found "
            f"(looked for files named like {stems.iloc[0]}.png in any subfolder; {len(found)} other images)"
        )
    notes = {
        "missing_images": len(missing),
        "missing_examples": missing[:_EXAMPLES],
        "unlisted_images": len(set(found) - set(listed)),
        "stems_found_twice": twice,
    }
    return paths, notes


def graz_items(src: Path, *, drop_uncertain: bool = False) -> tuple[list[ImportItem], dict[str, Any]]:
    """GRAZPEDWRI-DX images under ``src`` (``dataset.csv`` plus images in any subfolders) as import items.

    Table rows whose image is missing are reported (count and first few), not fatal; a study missing one
    view becomes a one-view study.

    Raises:
        DataError: no table, a malformed table, or none of its images under ``src``.
    """
    src = Path(src)
    table = read_table(src / TABLE_FILE, GRAZ_COLUMNS)
    images, summary = graz_studies(table, drop_uncertain=drop_uncertain)
    paths, notes = _locate(src, images["filestem"], table["filestem"], "GRAZPEDWRI-DX")
    items = [
        ImportItem(
            source=GRAZ_SOURCE,
            relative=path.relative_to(src).as_posix(),
            label=row.label,
            path=path,
            patient_id=row.patient_id,
            origin=GRAZ_ORIGIN,
            study_id=row.study_id,
            view=row.view,
        )
        for row, path in zip(images.itertuples(), paths, strict=True)
        if path is not None
    ]
    uncertain = sorted(set(images.loc[images["uncertain"], "study_id"]))
    return items, {**summary.model_dump(), **notes, "uncertain_studies": uncertain}


def _regions(rows: pd.DataFrame) -> np.ndarray:
    """Each film's body region: ``mixed``, else the first of hand, leg, hip, shoulder flagged (``other``: none)."""
    region = np.full(len(rows), "other", dtype=object)
    for name in reversed(REGIONS):
        if name in rows.columns:
            region = np.where(_flag(rows[name]), name, region)
    return np.where(_flag(rows["mixed"]), "mixed", region)


def fracatlas_images(
    table: pd.DataFrame, *, region: str | None = None, limit: int | None = None, seed: int = 0
) -> tuple[pd.DataFrame, FracAtlasSummary]:
    """FracAtlas rows to import (``image_id``, ``stem``, ``label``, ``view``) and the counts of the choice.

    Args:
        table: FracAtlas ``dataset.csv`` as strings.
        region: ``hand`` (hand films that are not mixed), ``leg``, ``hip`` or ``shoulder``; ``None``: all.
        limit: at most this many images, a seeded random sample (for quick runs and tests).
        seed: seed of that sample.
    """
    if region is not None and region not in REGIONS:
        raise ConfigError(f"unknown FracAtlas region {region!r}; choose one of {', '.join(REGIONS)}")
    rows = table
    if region is not None:
        if region not in rows.columns:
            raise DataError(f"FracAtlas table has no {region!r} column")
        rows = rows[_flag(rows[region]) & ~_flag(rows["mixed"])]
    if limit is not None and len(rows) > limit:
        picked = np.sort(np.random.default_rng(seed).choice(len(rows), size=limit, replace=False))
        rows = rows.iloc[picked]
    frontal, lateral, oblique = (_flag(rows[c]) for c in ("frontal", "lateral", "oblique"))
    out = pd.DataFrame(
        {
            "image_id": rows["image_id"],
            "stem": rows["image_id"].map(lambda name: Path(name).stem),
            "label": np.where(_flag(rows["fractured"]), "fracture", "normal"),
            "view": np.where(lateral & ~frontal, "lateral", "pa"),
            "region": _regions(rows),
        }
    ).reset_index(drop=True)
    summary = FracAtlasSummary(
        table_images=len(table),
        region=region,
        kept=len(out),
        fracture=int((out["label"] == "fracture").sum()),
        normal=int((out["label"] == "normal").sum()),
        views={str(k): int(v) for k, v in out["view"].value_counts().items()},
        oblique_as_pa=int((oblique & ~frontal & ~lateral).sum()),
        frontal_and_lateral_as_pa=int((frontal & lateral).sum()),
        limit=limit,
    )
    return out, summary


@dataclass(frozen=True)
class FracAtlasFolder:
    """A FracAtlas folder read once: its table and its image files by stem (an import reads both for its
    region's films and for the other regions' films)."""

    root: Path
    table: pd.DataFrame
    images: dict[str, Path]
    stems_found_twice: int

    @classmethod
    def of(cls, src: Path | FracAtlasFolder) -> FracAtlasFolder:
        """``src`` read (``dataset.csv`` plus the images in any subfolder), or ``src`` itself when already read."""
        if isinstance(src, FracAtlasFolder):
            return src
        table = read_table(Path(src) / TABLE_FILE, FRACATLAS_COLUMNS)
        images, twice = images_by_stem(Path(src))
        return cls(Path(src), table, images, twice)


def fracatlas_items(
    src: Path | FracAtlasFolder, *, region: str | None = None, limit: int | None = None, seed: int = 0
) -> tuple[list[ImportItem], dict[str, Any]]:
    """FracAtlas images under ``src`` (``dataset.csv`` plus ``images/...``) as one-view import items."""
    folder = FracAtlasFolder.of(src)
    table = folder.table
    rows, summary = fracatlas_images(table, region=region, limit=limit, seed=seed)
    listed = table["image_id"].map(lambda name: Path(name).stem)
    index = (folder.images, folder.stems_found_twice)
    paths, notes = _locate(folder.root, rows["stem"], listed, "FracAtlas", index)
    items = [
        ImportItem(
            source=FRACATLAS_SOURCE,
            relative=path.relative_to(folder.root).as_posix(),
            label=row.label,
            path=path,
            patient_id=f"{FRACATLAS_SOURCE}:{row.stem.lower()}",
            origin=f"{FRACATLAS_SOURCE}-{row.region}",
            view=row.view,
        )
        for row, path in zip(rows.itertuples(), paths, strict=True)
        if path is not None
    ]
    return items, {**summary.model_dump(), **notes}


def fracatlas_other_regions(
    src: Path | FracAtlasFolder,
    region: str,
    *,
    regions: Sequence[str] | None = None,
    cap: int | None = OTHER_REGIONS_MAX,
    seed: int = 0,
) -> tuple[list[ImportItem], dict[str, Any]]:
    """FracAtlas films of other body regions than ``region`` (none of them showing it) as reject-class items of
    the wrist task, at most ``cap`` of each region (a seeded sample), and their counts by region.

    Args:
        src: the FracAtlas folder.
        region: the region the wrist data set keeps (``hand``).
        regions: the other regions to take (default: every region but ``region``).
        cap: at most this many films per region.
        seed: seed of the samples.
    """
    folder = FracAtlasFolder.of(src)
    table = folder.table
    wanted = [r for r in (regions if regions is not None else REGIONS) if r != region]
    unknown = sorted(set(wanted) - set(REGIONS))
    if unknown:
        raise ConfigError(f"unknown FracAtlas regions {unknown}; choose from {', '.join(REGIONS)}")
    rows = table[~_flag(table[region])] if region in table.columns else table
    first = pd.Series("", index=rows.index)
    for name in reversed([r for r in REGIONS if r in rows.columns and r != region]):
        first = first.mask(_flag(rows[name]), name)
    chosen: list[pd.DataFrame] = []
    for name in wanted:
        group = rows[first == name]
        chosen.append(group.iloc[sample_indices(len(group), cap, seed)].assign(region=name))
    picked_rows = pd.concat(chosen) if chosen else rows.iloc[:0].assign(region="")
    stems = picked_rows["image_id"].map(lambda name: Path(name).stem)
    paths = [folder.images.get(stem) for stem in stems]
    items = [
        ImportItem(
            source=f"{FRACATLAS_SOURCE}-{name}",
            relative=path.relative_to(folder.root).as_posix(),
            label=WRIST.reject or "unknown",
            path=path,
        )
        for name, path in zip(picked_rows["region"], paths, strict=True)
        if path is not None
    ]
    counts = {name: int((picked_rows["region"] == name).sum()) for name in wanted}
    return as_studies(WRIST, items), {"regions": counts, "missing_images": sum(p is None for p in paths)}


def import_wrist(
    src: Path,
    store: ObjectStore,
    *,
    seed: int,
    fracatlas: Path | None = None,
    region: str | None = None,
    limit: int | None = None,
    drop_uncertain: bool = False,
    rejects: RejectSources = RejectSources(),
    other_regions: Sequence[str] | None = None,
    other_regions_max: int | None = OTHER_REGIONS_MAX,
    limits: DecodeLimits = DEFAULT_LIMITS,
    workers: int = 2,
) -> ImportResult:
    """Import GRAZPEDWRI-DX (and optionally FracAtlas) as a new version of the wrist data set.

    Splits are 80/8/10/1/1, grouped by patient and stratified by label.

    Args:
        src: the GRAZPEDWRI-DX folder: ``dataset.csv`` and the images in any subfolders.
        store: object store for images and manifest.
        seed: split seed.
        fracatlas: a FracAtlas folder to import alongside (one-view studies).
        region: FracAtlas region filter (see :func:`fracatlas_images`).
        limit: at most this many FracAtlas images.
        drop_uncertain: leave out GRAZPEDWRI-DX studies with an uncertain diagnosis.
        rejects: what the 'unknown' class learns from: by default generated non-X-rays and the other tasks'
            radiographs already in ``store`` (chest films), so a chest film or a photo is refused.
        other_regions: with ``fracatlas`` and a ``region``, FracAtlas films of these other regions join
            'unknown' (default: every other region; empty: none).
        other_regions_max: at most this many films of each other region (a seeded sample).
        limits: the image sizes accepted; other images are skipped (too small, decompression bomb).
        workers: decoding processes.
    """
    items, notes = graz_items(src, drop_uncertain=drop_uncertain)
    details: dict[str, Any] = {GRAZ_SOURCE: notes}
    if fracatlas is not None:
        folder = FracAtlasFolder.of(fracatlas)
        more, details[FRACATLAS_SOURCE] = fracatlas_items(folder, region=region, limit=limit, seed=seed)
        items += more + _other_regions(folder, region, other_regions, other_regions_max, seed, details)
    items += reject_items(WRIST, store, rejects, seed=seed)
    return import_images(
        WRIST,
        [],
        store,
        seed=seed,
        items=items,
        details=details,
        limits=limits,
        workers=workers,
    )


def import_fracatlas(
    src: Path,
    store: ObjectStore,
    *,
    seed: int,
    region: str | None = None,
    limit: int | None = None,
    rejects: RejectSources = RejectSources(),
    other_regions: Sequence[str] | None = None,
    other_regions_max: int | None = OTHER_REGIONS_MAX,
    limits: DecodeLimits = DEFAULT_LIMITS,
    workers: int = 2,
) -> ImportResult:
    """Import FracAtlas alone as a new version of the wrist data set (one-view studies).

    Args:
        src: the FracAtlas folder: ``dataset.csv`` and the images in any subfolders.
        store: object store for images and manifest.
        seed: split seed (and seed of the ``limit`` sample).
        region: ``hand`` keeps hand/wrist films (see :func:`fracatlas_images`).
        limit: at most this many images, a seeded sample.
        rejects: what the 'unknown' class learns from besides other regions (see :func:`import_wrist`).
        other_regions: with a ``region``, films of these other regions join 'unknown' (default: every other
            region; empty: none).
        other_regions_max: at most this many films of each other region (a seeded sample).
        limits: the image sizes accepted; other images are skipped (too small, decompression bomb).
        workers: decoding processes.
    """
    folder = FracAtlasFolder.of(src)
    items, notes = fracatlas_items(folder, region=region, limit=limit, seed=seed)
    details: dict[str, Any] = {FRACATLAS_SOURCE: notes}
    items += _other_regions(folder, region, other_regions, other_regions_max, seed, details)
    items += reject_items(WRIST, store, rejects, seed=seed)
    return import_images(
        WRIST,
        [],
        store,
        seed=seed,
        items=items,
        details=details,
        limits=limits,
        workers=workers,
    )


def _other_regions(
    src: FracAtlasFolder,
    region: str | None,
    regions: Sequence[str] | None,
    cap: int | None,
    seed: int,
    details: dict[str, Any],
) -> list[ImportItem]:
    """Other-region FracAtlas films as 'unknown' when a region is kept (their counts go into ``details``)."""
    if region is None or (regions is not None and not regions):
        return []
    items, details["fracatlas_other_regions"] = fracatlas_other_regions(
        src, region, regions=regions, cap=cap, seed=seed
    )
    return items


# --- download from Figshare ---------------------------------------------------------------------------------


def fetch_wrist(
    target: Path,
    token: str | None = None,
    *,
    client: httpx.Client | None = None,
    article_id: int = FIGSHARE_ARTICLE_ID,
    settings: Settings | None = None,
) -> Path:
    """Download GRAZPEDWRI-DX from Figshare into ``target`` and unpack its zip archives there
    (:func:`~care_companion.data.figshare.fetch_article`): the layout ``data import wrist`` reads.

    Args:
        target: the folder to fill.
        token: Figshare personal token (default: ``settings.figshare_token``, i.e. ``CARE_FIGSHARE_TOKEN`` or
            ``FIGSHARE_TOKEN``).
        client: the HTTP client (default: a new one following redirects).
        article_id: the Figshare article (GRAZPEDWRI-DX).
        settings: where the token is read (default: :func:`~care_companion.config.get_settings`).
    """
    manual = f"download https://doi.org/10.6084/m9.figshare.{article_id} yourself and run 'data import wrist DIR'"
    return fetch_article(target, article_id, token, manual=manual, client=client, settings=settings)


def wrist_folder_items(src: Path, *, region: str | None = None) -> tuple[list[ImportItem], dict[str, Any]]:
    """The labelled wrist images under ``src``, whichever source's layout it has: GRAZPEDWRI-DX (a
    ``dataset.csv`` with ``filestem``) or FracAtlas (a ``dataset.csv`` with ``image_id``; ``region`` filters).

    Raises:
        DataError: no ``dataset.csv``, or one of neither layout.
    """
    columns = set(read_table(Path(src) / TABLE_FILE, []).columns)
    if "filestem" in columns:
        return graz_items(src)
    if "image_id" in columns:
        return fracatlas_items(src, region=region)
    raise DataError(
        f"{Path(src) / TABLE_FILE}: neither a GRAZPEDWRI-DX table (filestem, projection, ...) nor a FracAtlas "
        "table (image_id, fractured, ...)"
    )
