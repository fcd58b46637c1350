"""The generic importer: class-folder trees into any task's data set (tasks without an importer of their own)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from care_companion.data.importer import ImportResult, import_images
from care_companion.errors import DataError
from care_companion.storage import ObjectStore
from care_companion.tasks import TaskSpec


def import_folders(
    sources: list[Path],
    store: ObjectStore,
    *,
    task: TaskSpec,
    seed: int,
    names: list[str] | None = None,
    workers: int = 2,
    **limits: Any,
) -> ImportResult:
    """Import class-folder trees (one folder per class of ``task``, any depth) as the task's new data-set version.

    Args:
        sources: the trees.
        store: the object store receiving images, manifest and report.
        task: the task whose class names the folders use.
        seed: seed of the patient-grouped split.
        names: the source name recorded per tree (default: each folder's name).
        workers: decoding processes.
        limits: decoding limits passed on to :func:`care_companion.data.importer.import_images`.

    Raises:
        DataError: ``names`` does not give one name per source.
    """
    if names is not None and len(names) != len(sources):
        raise DataError(f"{len(names)} names for {len(sources)} sources: give one --name per source or none")
    named = list(zip(names or [Path(s).name for s in sources], sources, strict=True))
    return import_images(task, named, store, seed=seed, workers=workers, **limits)
