"""The data-set manifest: one row per image, versioned by a hash of its content."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass

import pandas as pd

from care_companion.errors import DataError
from care_companion.storage.base import ObjectStore

COLUMNS: list[str] = [
    "key",  # object-store key of the processed 8-bit grayscale PNG
    "label",
    "source",  # the import source name (e.g. cxr-real)
    "origin",  # where the file name says the image comes from (e.g. kermany, shenzhen)
    "patient_id",
    "path",  # path of the original file relative to its source root
    "width",
    "height",
    "bytes",  # size of the original file
    "sha256",  # of the original file
    "pixel_sha256",  # of the decoded pixels, catching re-encoded duplicates
    "split",
]
_VERSION_COLUMNS = ["pixel_sha256", "label", "source", "patient_id", "split"]


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


def manifest_version(frame: pd.DataFrame) -> str:
    """``v-`` plus 12 hex digits of a SHA-256 over the sorted defining columns."""
    rows = frame[_VERSION_COLUMNS].fillna("").astype(str).sort_values(_VERSION_COLUMNS)
    digest = hashlib.sha256(rows.to_csv(index=False).encode()).hexdigest()
    return f"v-{digest[:12]}"


def dataset_prefix(task: str) -> str:
    """Object-store prefix of a task's data set."""
    return f"datasets/{task}"


def save_manifest(store: ObjectStore, manifest: Manifest, report: dict | None = None) -> str:
    """Write the manifest (latest and versioned copies) and optional import report; returns the version."""
    version = manifest.version
    data = manifest.frame[COLUMNS].to_csv(index=False).encode()
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
    frame = pd.read_csv(io.BytesIO(store.get_bytes(key)), dtype={"patient_id": "string"}, keep_default_na=False)
    frame["patient_id"] = frame["patient_id"].replace("", pd.NA)
    return Manifest(task=task, frame=frame)
