"""Import labelled radiographs into a versioned data set: decode, validate, deduplicate, split, store.

Every file is decoded and converted to 8-bit grayscale; files that fail are skipped and listed in the
import report with the reason. Images are written content-addressed (by pixel hash) as PNG to the object
store, so re-importing the same data writes the same objects and yields the same version.

Images come from class-folder trees or as already-labelled :class:`ImportItem` s, which may name their
patient, study and view (two-view wrist studies). Duplicates are dropped image by image: the first copy in
item order is kept and later copies are listed in the report, so a duplicated image removes only that view
from its study (the study keeps its other view). Splits are grouped by patient, else by study, else by image,
so all images of a study, and of a patient, land in one split.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from pydantic import BaseModel, Field

from care_companion.data.folders import scan_class_folders
from care_companion.data.manifest import COLUMNS, Manifest, dataset_prefix, save_manifest, study_counts
from care_companion.data.patients import origin_and_patient
from care_companion.data.splits import grouped_stratified_split
from care_companion.errors import DataError, InvalidImageError
from care_companion.imaging.decode import DEFAULT_LIMITS, DecodeLimits, decode_file
from care_companion.parallel import parallel_map
from care_companion.storage.base import ObjectStore
from care_companion.tasks import TaskSpec

MAX_STORED_SIDE = 1024


class SkippedFile(BaseModel):
    """A file left out of the data set, and why."""

    source: str
    path: str
    reason: str
    detail: str


class ImportResult(BaseModel):
    """What an import produced: the version, what went in, and what was left out."""

    task: str
    version: str
    n_images: int
    counts: dict[str, dict[str, int]] = Field(description="source -> class -> images kept")
    splits: dict[str, dict[str, int]] = Field(description="split -> class -> images")
    studies: dict[str, dict[str, int]] = Field(
        default_factory=dict,
        description="split -> 'label:<class>' / 'views:<pa+lateral>' / 'images' -> count (see study_counts)",
    )
    details: dict[str, Any] = Field(default_factory=dict, description="source-specific notes (e.g. wrist studies)")
    skipped: list[SkippedFile] = Field(default_factory=list)
    duplicates: list[dict[str, str]] = Field(default_factory=list)
    unlabelled: list[str] = Field(default_factory=list)
    manifest_key: str
    report_key: str


@dataclass(frozen=True)
class ImportItem:
    """An image to import with its label: a file (``path``) or generated ``pixels``.

    ``patient_id`` (with ``origin``) overrides what the file name tells (see ``data.patients``); ``study_id``
    and ``view`` place the image in a multi-view study (empty: a one-view study of the task's first view).
    """

    source: str
    relative: str
    label: str
    path: Path | None = None
    pixels: np.ndarray | None = None
    patient_id: str | None = None
    origin: str | None = None
    study_id: str = ""
    view: str = ""

    def origin_and_patient(self) -> tuple[str, str | None]:
        """The origin and patient id recorded for this image."""
        if self.patient_id is not None:
            return self.origin or "other", self.patient_id
        origin, patient = origin_and_patient(Path(self.relative).stem)
        return (origin if self.path is not None else "generated"), patient


@dataclass(frozen=True)
class Prepared:
    """An image ready for the data set: its stored PNG, size and the hashes duplicates are found by."""

    png: bytes
    width: int
    height: int
    size: int
    sha256: str
    pixel_sha256: str


@dataclass(frozen=True)
class _Processed:
    item: ImportItem
    prepared: Prepared


def encode_png(image: np.ndarray) -> bytes:
    """Lossless 8-bit grayscale PNG bytes of an image."""
    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _shrink(image: np.ndarray, max_side: int) -> np.ndarray:
    h, w = image.shape
    scale = max_side / max(h, w)
    if scale >= 1:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def _process(args: tuple[ImportItem, DecodeLimits]) -> _Processed | SkippedFile:
    item, limits = args
    try:
        if item.pixels is not None:
            raw = encode_png(item.pixels)
            image = item.pixels
        else:
            assert item.path is not None
            raw = item.path.read_bytes()
            image = decode_file(item.path, limits=limits)
    except InvalidImageError as exc:
        return SkippedFile(source=item.source, path=item.relative, reason=exc.reason, detail=exc.detail)
    except OSError as exc:
        return SkippedFile(source=item.source, path=item.relative, reason="unreadable", detail=str(exc))
    return _Processed(item=item, prepared=prepare(image, raw))


def prepare(image: np.ndarray, raw: bytes) -> Prepared:
    """Shrink a decoded image to the stored size and hash it (``raw``: the original file's bytes)."""
    image = _shrink(image, MAX_STORED_SIDE)
    return Prepared(
        png=encode_png(image),
        width=image.shape[1],
        height=image.shape[0],
        size=len(raw),
        sha256=hashlib.sha256(raw).hexdigest(),
        pixel_sha256=hashlib.sha256(image.tobytes() + str(image.shape).encode()).hexdigest(),
    )


def store_prepared(store: ObjectStore, task: str, prepared: Prepared) -> str:
    """Put a prepared image in the data set's content-addressed image folder; returns its key."""
    key = f"{dataset_prefix(task)}/images/{prepared.pixel_sha256[:2]}/{prepared.pixel_sha256}.png"
    if not store.exists(key):
        store.put_bytes(key, prepared.png)
    return key


def import_images(
    task: TaskSpec,
    sources: list[tuple[str, Path]],
    store: ObjectStore,
    *,
    seed: int,
    items: Sequence[ImportItem] | None = None,
    details: dict[str, Any] | None = None,
    limits: DecodeLimits = DEFAULT_LIMITS,
    workers: int = 2,
) -> ImportResult:
    """Import class-folder trees and labelled items (files or generated pixels) as the task's new data set version.

    Args:
        task: the task whose class names the folders must use.
        sources: (source name, root folder) pairs; the source name is recorded for every image.
        store: object store receiving images, manifest and import report.
        seed: seed of the patient-grouped split.
        items: already-labelled images, possibly with patient, study and view (kept in this order, so the
            first of two duplicates is the one earlier in the list).
        details: source-specific notes stored in the import report and the result.
        limits: the image sizes accepted; smaller or larger images are skipped (too small, decompression bomb).
        workers: decoding processes.
    """
    todo: list[ImportItem] = []
    unlabelled: list[str] = []
    for name, root in sources:
        if not Path(root).is_dir():
            raise DataError(f"{root}: source folder not found")
        found, loose = scan_class_folders(Path(root), task)
        if not found:
            raise DataError(
                f"{root}: no images under class folders named {', '.join(task.classes)} (any case, any depth)"
            )
        todo += [ImportItem(source=name, relative=f.relative, label=f.label, path=f.path) for f in found]
        unlabelled += [f"{name}/{rel}" for rel in loose]
    todo += list(items or [])
    return _import(
        task,
        todo,
        store,
        seed=seed,
        unlabelled=unlabelled,
        details=details or {},
        limits=limits,
        workers=workers,
    )


def _import(
    task: TaskSpec,
    items: list[ImportItem],
    store: ObjectStore,
    *,
    seed: int,
    unlabelled: list[str],
    details: dict[str, Any],
    limits: DecodeLimits,
    workers: int,
) -> ImportResult:
    """Decode, deduplicate, store and split ``items``, then save the manifest and report."""
    wrong = sorted({i.label for i in items} - set(task.classes)) + sorted({i.view for i in items} - {"", *task.views})
    if wrong:
        raise DataError(f"labels or views {wrong} are not {task.name} classes {task.classes} or views {task.views}")

    rows: list[dict] = []
    skipped: list[SkippedFile] = []
    duplicates: list[dict[str, str]] = []
    seen: dict[str, str] = {}
    work = [(item, limits) for item in items]
    for processed in parallel_map(
        _process, work, workers=workers, description=f"importing {len(items)} {task.name} images"
    ):
        if isinstance(processed, SkippedFile):
            skipped.append(processed)
            continue
        where = f"{processed.item.source}/{processed.item.relative}"
        prepared = processed.prepared
        first = seen.get(prepared.sha256) or seen.get(prepared.pixel_sha256)
        if first is not None:
            duplicates.append({"path": where, "duplicate_of": first})
            continue
        seen[prepared.sha256] = seen[prepared.pixel_sha256] = where
        key = store_prepared(store, task.name, prepared)
        origin, patient = processed.item.origin_and_patient()
        rows.append(
            {
                "key": key,
                "label": processed.item.label,
                "source": processed.item.source,
                "origin": origin,
                "patient_id": patient,
                "study_id": processed.item.study_id,
                "view": processed.item.view,
                "path": processed.item.relative,
                "width": prepared.width,
                "height": prepared.height,
                "bytes": prepared.size,
                "sha256": prepared.sha256,
                "pixel_sha256": prepared.pixel_sha256,
            }
        )
    if not rows:
        raise DataError("no usable images were found; see the skipped files in the import report")

    frame = pd.DataFrame(rows).sort_values(["source", "path"]).reset_index(drop=True)
    keys = zip(frame["patient_id"], frame["study_id"], frame["pixel_sha256"], strict=True)
    groups = [_split_group(patient, study, pixels) for patient, study, pixels in keys]
    frame["split"] = grouped_stratified_split(list(frame["label"]), groups, seed=seed)
    manifest = Manifest(task=task.name, frame=frame[COLUMNS])
    counts = {s: dict(Counter(g["label"])) for s, g in frame.groupby("source")}
    splits = {s: dict(Counter(g["label"])) for s, g in frame.groupby("split")}
    version = manifest.version
    prefix = f"{dataset_prefix(task.name)}/versions/{version}"
    result = ImportResult(
        task=task.name,
        version=version,
        n_images=len(frame),
        counts=counts,
        splits=splits,
        studies=study_counts(frame, task.views),
        details=details,
        skipped=sorted(skipped, key=lambda s: (s.source, s.path)),
        duplicates=duplicates,
        unlabelled=unlabelled,
        manifest_key=f"{prefix}/manifest.csv",
        report_key=f"{prefix}/import_report.json",
    )
    save_manifest(store, manifest, report=result.model_dump(mode="json"))
    return result


def _split_group(patient: object, study: str, pixel_sha256: str) -> str:
    """What a row's split is grouped by: its patient, else its study, else the image itself."""
    if isinstance(patient, str):
        return patient
    return f"study:{study}" if study else f"image:{pixel_sha256}"
