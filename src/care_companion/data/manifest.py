"""The data-set manifest: one row per image, versioned by a hash of its content.

Images belong to studies: ``study_id`` names the study (empty: the image is a one-view study of its own)
and ``view`` its projection within the study (empty: the task's first view). :func:`study_table` turns
the image rows into one row per study with the row index of each view's image.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from care_companion.errors import DataError
from care_companion.storage.base import ObjectStore

COLUMNS: list[str] = [
    "key",  # object-store key of the processed 8-bit grayscale PNG
    "label",
    "source",  # the import source name (e.g. cxr-real)
    "origin",  # where the file name says the image comes from (e.g. kermany, shenzhen)
    "patient_id",
    "study_id",  # the study the image belongs to; empty: a one-view study of its own
    "view",  # the projection within its study (e.g. pa, lateral); empty: the task's first view
    "path",  # path of the original file relative to its source root
    "width",
    "height",
    "bytes",  # size of the original file
    "sha256",  # of the original file
    "pixel_sha256",  # of the decoded pixels, catching re-encoded duplicates
    "split",
]
STUDY_COLUMNS: list[str] = ["study_id", "view"]
_VERSION_COLUMNS = ["pixel_sha256", "label", "source", "patient_id", "split"]
# columns of a study table besides the per-view index columns
STUDY_TABLE_COLUMNS: list[str] = ["study", "label", "split", "source", "origin", "patient_id", "extra_images"]


@dataclass(frozen=True)
class Manifest:
    """A manifest and the version derived from its content."""

    task: str
    frame: pd.DataFrame

    @property
    def version(self) -> str:
        """Content hash of the rows that define the data set (independent of row order and local paths)."""
        return manifest_version(self.frame)

    def split(self, name: str) -> pd.DataFrame:
        """Rows of one split, in manifest order."""
        return self.frame[self.frame["split"] == name].reset_index(drop=True)


def with_study_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with ``study_id`` and ``view`` as strings, ``""`` where missing (older manifests lack them)."""
    frame = frame.copy()
    for column in STUDY_COLUMNS:
        values = frame[column] if column in frame.columns else pd.Series("", index=frame.index)
        frame[column] = values.fillna("").astype(str)
    return frame


def manifest_version(frame: pd.DataFrame) -> str:
    """``v-`` plus 12 hex digits of a SHA-256 over the sorted defining columns.

    ``study_id`` and ``view`` count only when some row sets one, so manifests without studies (every chest
    manifest) keep the version they had before these columns existed.
    """
    frame = with_study_columns(frame)
    columns = _VERSION_COLUMNS + [c for c in STUDY_COLUMNS if (frame[c] != "").any()]
    rows = frame[columns].fillna("").astype(str).sort_values(columns)
    digest = hashlib.sha256(rows.to_csv(index=False).encode()).hexdigest()
    return f"v-{digest[:12]}"


def dataset_prefix(task: str) -> str:
    """Object-store prefix of a task's data set."""
    return f"datasets/{task}"


def save_manifest(store: ObjectStore, manifest: Manifest, report: dict | None = None) -> str:
    """Write the manifest (latest and versioned copies) and optional import report; returns the version."""
    version = manifest.version
    data = with_study_columns(manifest.frame)[COLUMNS].to_csv(index=False).encode()
    prefix = dataset_prefix(manifest.task)
    store.put_bytes(f"{prefix}/versions/{version}/manifest.csv", data)
    if report is not None:
        store.put_bytes(f"{prefix}/versions/{version}/import_report.json", json.dumps(report, indent=2).encode())
    # "latest" is written last so a reader never sees a pointer to a version that is not complete
    store.put_bytes(f"{prefix}/LATEST", version.encode())
    return version


def load_manifest(store: ObjectStore, task: str, version: str | None = None) -> Manifest:
    """Read a task's manifest: the given version, or the latest import."""
    prefix = dataset_prefix(task)
    if version is None:
        if not store.exists(f"{prefix}/LATEST"):
            raise DataError(
                f"no {task} data set in the object store {store.uri('')}; "
                f"run 'care-companion data import {task} SRC' first"
            )
        version = store.get_bytes(f"{prefix}/LATEST").decode().strip()
    key = f"{prefix}/versions/{version}/manifest.csv"
    if not store.exists(key):
        raise DataError(f"data set version {version} of {task} not found in {store.uri('')}")
    text = dict.fromkeys(["patient_id", *STUDY_COLUMNS], "string")
    frame = pd.read_csv(io.BytesIO(store.get_bytes(key)), dtype=text, keep_default_na=False)
    frame = with_study_columns(frame)
    frame["patient_id"] = frame["patient_id"].replace("", pd.NA)
    return Manifest(task=task, frame=frame)


def view_column(view: str) -> str:
    """Name of a study table's column holding the row index of a view's image (``view_pa``)."""
    return f"view_{view}"


def study_table(frame: pd.DataFrame, views: Sequence[str]) -> pd.DataFrame:
    """One row per study of a manifest frame, in order of each study's first image.

    Columns: ``study`` (the ``study_id``, or the image's ``key`` for an image without one), ``label``,
    ``split``, ``source``, ``origin``, ``patient_id`` (of the study's first image), ``extra_images`` and, per
    view, ``view_<name>``: the positional row index in ``frame`` of the study's image of that view, or -1.
    A study with two images of one view keeps the first in frame order (importers never write such
    studies); ``extra_images`` counts the images left out this way.

    Args:
        frame: manifest rows (any index; indices returned are positions).
        views: the task's views; an image with an empty ``view`` is taken as the first.

    Raises:
        DataError: a study whose images disagree on label, split or patient, or an image of an unknown view.
    """
    frame = with_study_columns(frame).reset_index(drop=True)
    study = frame["study_id"].where(frame["study_id"] != "", frame["key"].astype(str))
    view = frame["view"].where(frame["view"] != "", views[0])
    unknown = sorted(set(view) - set(views))
    if unknown:
        raise DataError(f"manifest images of unknown views {unknown}; the task's views are {list(views)}")
    patient = frame["patient_id"].astype(object).where(frame["patient_id"].notna(), "")
    work = pd.DataFrame({"study": study, "label": frame["label"], "split": frame["split"], "patient": patient})
    _check_studies_agree(work)
    first = ~study.duplicated()
    table = pd.DataFrame(
        {
            "study": study[first].to_numpy(),
            **{c: frame.loc[first, c].to_numpy() for c in ("label", "split", "source", "origin", "patient_id")},
        }
    )
    kept = ~pd.DataFrame({"study": study, "view": view}).duplicated()
    counts = study.value_counts()
    table["extra_images"] = (table["study"].map(counts) - table["study"].map(study[kept].value_counts())).to_numpy()
    for name in views:
        rows = pd.Series(np.flatnonzero(kept & (view == name)), dtype=np.int64)
        index = pd.Series(rows.to_numpy(), index=study.to_numpy()[rows.to_numpy()])
        table[view_column(name)] = table["study"].map(index).fillna(-1).astype(np.int64).to_numpy()
    return table


def _check_studies_agree(work: pd.DataFrame) -> None:
    """Raise when the images of one study disagree on label, split or patient."""
    for column in ("label", "split", "patient"):
        spread = work.groupby("study", sort=True)[column].nunique(dropna=False)
        bad = spread[spread > 1]
        if len(bad):
            values = sorted(work.loc[work["study"] == bad.index[0], column].astype(str).unique())
            raise DataError(
                f"study {bad.index[0]} has images with different {column} values {values} "
                f"({len(bad)} studies disagree on {column}); all images of a study must share it"
            )


def study_kinds(table: pd.DataFrame, views: Sequence[str]) -> pd.Series:
    """Which views each study of a :func:`study_table` has, as ``"pa+lateral"``, ``"pa"``, ``"lateral"``."""
    present = [np.where(table[view_column(name)] >= 0, name, "") for name in views]
    kinds = ["+".join(name for name in combo if name) for combo in zip(*present, strict=True)]
    return pd.Series(kinds, index=table.index, dtype=str)


def study_counts(frame: pd.DataFrame, views: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per split: studies per label, per view combination (:func:`study_kinds`) and the split's images."""
    table = study_table(frame, views)
    kinds = study_kinds(table, views)
    out: dict[str, dict[str, int]] = {}
    for split in sorted(set(table["split"])):
        mine = table["split"] == split
        labels = table.loc[mine, "label"].value_counts()
        combos = kinds[mine].value_counts()
        out[str(split)] = {
            **{f"label:{k}": int(v) for k, v in labels.items()},
            **{f"views:{k}": int(v) for k, v in combos.items()},
            "images": int((frame["split"] == split).sum()),
        }
    return out
