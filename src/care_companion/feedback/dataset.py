"""A retraining data set: the current manifest plus the images radiologists labelled (the feedback loop).

Every confirmed verdict with a labelled copy (``feedback/<task>/<LABEL>/...``) becomes a row with the
radiologist's label, source ``feedback`` and patient ``records:<patient id>``. Images already in the data
set (same pixels) are skipped as duplicates; when one image was judged more than once, the latest verdict
wins. Existing rows keep their split, so test results stay comparable across versions; the new rows are
split 80/8/10/1/1 by patient, stratified by label. The result is a new data-set version, written as the
latest.
"""

from __future__ import annotations

from collections import Counter
from pathlib import PurePosixPath

import pandas as pd
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from care_companion.data.importer import prepare, store_prepared
from care_companion.data.manifest import COLUMNS, Manifest, load_manifest, save_manifest
from care_companion.data.splits import grouped_stratified_split
from care_companion.errors import DataError, InvalidImageError
from care_companion.imaging.decode import DEFAULT_LIMITS, DecodeLimits, decode_image
from care_companion.records.models import Feedback, Study
from care_companion.storage.base import ObjectStore
from care_companion.tasks import TaskSpec

SOURCE = "feedback"


class FeedbackDataset(BaseModel):
    """What building a retraining data set did."""

    task: str
    base_version: str
    version: str
    added: int
    duplicates: int
    skipped: dict[str, str]
    counts: dict[str, int]
    splits: dict[str, int]


def image_id(key: str) -> str:
    """The identity of a labelled copy: its file name, the content hash (the label folder may change)."""
    return PurePosixPath(key).name


def labelled_feedback(*, session: Session, task: str) -> list[tuple[str, str, int]]:
    """(object key, true label, patient id) of every verdict with a labelled copy; the latest per image."""
    stmt = (
        select(Feedback.object_key, Feedback.true_label, Study.patient_id)
        .join(Study, Feedback.study_id == Study.id)
        .where(Study.task == task, Feedback.object_key.is_not(None))
        .order_by(Feedback.id.desc())
    )
    latest: dict[str, tuple[str, str, int]] = {}
    for key, label, patient in session.execute(stmt):
        latest.setdefault(image_id(str(key)), (str(key), str(label), int(patient)))
    return sorted(latest.values())


def new_feedback_count(*, session: Session, store: ObjectStore, task: str) -> int:
    """Labelled images not yet in the latest data set (what ``retrain --if-needed`` weighs)."""
    try:
        frame = load_manifest(store, task).frame
        included = {image_id(p) for p in frame.loc[frame["source"] == SOURCE, "path"]}
    except DataError:
        included = set()
    return sum(image_id(key) not in included for key, _, _ in labelled_feedback(session=session, task=task))


def build_dataset(
    *,
    session: Session,
    store: ObjectStore,
    task: TaskSpec,
    seed: int,
    base_version: str | None = None,
    limits: DecodeLimits = DEFAULT_LIMITS,
) -> FeedbackDataset:
    """Add every labelled feedback image to the task's data set and save the result as a new version.

    Args:
        session: a session on the records database (read only).
        store: the object store holding the data set and the feedback copies.
        task: the task.
        seed: seed of the split of the new rows.
        base_version: the data set to extend (default: the latest).
        limits: the image sizes accepted; other images are skipped (too small, decompression bomb).
    """
    base = load_manifest(store, task.name, base_version)
    frame = base.frame.copy()
    verdicts = labelled_feedback(session=session, task=task.name)
    latest = {image_id(key): label for key, label, _ in verdicts if label in task.classes}
    # images added by an earlier build keep their split; a later verdict updates their label
    earlier = frame["source"] == SOURCE
    ids = frame["path"].map(image_id)
    relabel = earlier & ids.isin(list(latest)) & (frame["label"] != ids.map(latest))
    frame.loc[relabel, "label"] = ids[relabel].map(latest)
    included = set(ids[earlier])
    known = set(frame["pixel_sha256"])
    rows: list[dict[str, object]] = []
    skipped: dict[str, str] = {}
    duplicates = 0
    for key, label, patient in verdicts:
        if image_id(key) in included:
            continue
        if label not in task.classes:
            skipped[key] = f"label {label!r} is not a {task.name} class"
            continue
        data = store.get_bytes(key)
        try:
            image = decode_image(data, name=key, limits=limits)
        except InvalidImageError as exc:
            skipped[key] = exc.reason
            continue
        prepared = prepare(image, data)
        if prepared.pixel_sha256 in known:
            duplicates += 1
            continue
        known.add(prepared.pixel_sha256)
        rows.append(
            {
                "key": store_prepared(store, task.name, prepared),
                "label": label,
                "source": SOURCE,
                "origin": SOURCE,
                "patient_id": f"records:{patient}",
                "path": key,
                "width": prepared.width,
                "height": prepared.height,
                "bytes": prepared.size,
                "sha256": prepared.sha256,
                "pixel_sha256": prepared.pixel_sha256,
            }
        )
    new = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "split"])
    if len(new):
        new["split"] = grouped_stratified_split(list(new["label"]), list(new["patient_id"]), seed=seed)
    merged = pd.concat([frame, new[COLUMNS]], ignore_index=True) if len(new) else frame
    manifest = Manifest(task=task.name, frame=merged[COLUMNS].reset_index(drop=True))
    report = {
        "kind": "feedback",
        "base_version": base.version,
        "added": len(new),
        "relabelled": int(relabel.sum()),
        "duplicates": duplicates,
        "skipped": skipped,
    }
    version = save_manifest(store, manifest, report=report)
    return FeedbackDataset(
        task=task.name,
        base_version=base.version,
        version=version,
        added=len(new),
        duplicates=duplicates,
        skipped=skipped,
        counts=dict(Counter(new["label"])) if len(new) else {},
        splits=dict(Counter(new["split"])) if len(new) else {},
    )
