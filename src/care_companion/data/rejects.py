"""What a task's reject class learns from: images that are not radiographs of the task's body part.

Every task with a reject class gets, by default, generated non-X-ray images (augmented photographs and synthetic
scenes), radiographs from the other tasks' latest data sets already in the store (a chest model learns to refuse
wrist films and the wrist model chest films, and the chest model also the other body parts' radiographs the
wrist set's reject class holds), and any folders of other images the user names. A reject class
only knows the kinds of image it was trained on; the out-of-distribution gate (``models.ood``) covers the rest.

For a multi-view task the reject images become studies that cycle through "every view" (two images of one
study), "first view only" and "second view only", so the model learns to refuse a wrong film in any slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from care_companion.data.cache import load_stored_image
from care_companion.data.folders import image_files
from care_companion.data.importer import ImportItem
from care_companion.data.manifest import load_manifest
from care_companion.data.synthetic_chest import make_unknown_images
from care_companion.errors import ConfigError, DataError
from care_companion.storage.base import ObjectStore
from care_companion.tasks import TASKS, TaskSpec

NON_XRAY_SOURCE = "generated-non-xray"
OTHER_TASK_SOURCE = "other-task"
OTHER_BODY_PARTS = "other-body-parts"  # suffix of the source of another task's other-body-part radiographs
FOLDER_SOURCE_PREFIX = "non-"  # a user's folder of non-task images: "non-<body part>:<folder name>"


@dataclass(frozen=True)
class RejectSources:
    """Where an import finds the images its reject class learns from.

    Attributes:
        non_xray: generated non-X-ray images (photos, synthetic scenes); 0 for none.
        other_tasks: add radiographs of the other tasks' latest data sets already in the store.
        other_tasks_max: at most this many images from each other task's data set (a seeded sample).
        folders: folders of images that are not of the task's body part, every image a reject.
        folders_max: at most this many images from each folder (a seeded sample).
        size: side of the generated images.
    """

    non_xray: int = 400
    other_tasks: bool = True
    other_tasks_max: int | None = 300
    folders: tuple[Path, ...] = field(default_factory=tuple)
    folders_max: int | None = 300
    size: int = 256


NO_REJECTS = RejectSources(non_xray=0, other_tasks=False)


def sample_indices(count: int, cap: int | None, seed: int) -> list[int]:
    """Indices of a seeded sample of at most ``cap`` of ``count`` items (all of them, in order, when uncapped)."""
    if cap is None or count <= cap:
        return list(range(count))
    return sorted(int(i) for i in np.random.default_rng(seed).choice(count, size=cap, replace=False))


def non_xray_items(task: TaskSpec, n: int, *, seed: int, size: int = 256) -> list[ImportItem]:
    """``n`` generated non-X-ray images (augmented photographs and synthetic scenes) labelled as the reject class."""
    rng = np.random.default_rng(seed)
    return [
        ImportItem(source=NON_XRAY_SOURCE, relative=f"non-xray/{i:05d}.png", label=_reject(task), pixels=image)
        for i, image in enumerate(make_unknown_images(rng, n, size))
    ]


def other_task_items(task: TaskSpec, store: ObjectStore, *, seed: int, max_per_task: int | None) -> list[ImportItem]:
    """Radiographs of every other task's latest data set in ``store``, labelled as ``task``'s reject class: its
    clinical films, and the radiographs of other body parts its own reject class holds (:func:`other_body_part`:
    e.g. a wrist set's FracAtlas leg, hip and shoulder films teach the chest model too), at most
    ``max_per_task`` of each kind (a seeded sample)."""
    out: list[ImportItem] = []
    for name, other in sorted(TASKS.items()):
        if name == task.name:
            continue
        try:
            frame = load_manifest(store, name).frame
        except DataError:  # no data set of that task yet
            continue
        rejected = frame["label"] == (other.reject or "\0")
        kinds = {
            f"{OTHER_TASK_SOURCE}:{name}": ~rejected,
            f"{OTHER_TASK_SOURCE}:{name}:{OTHER_BODY_PARTS}": rejected
            & frame["source"].astype(str).map(other_body_part),
        }
        for source, chosen in kinds.items():
            keys = sorted(set(frame.loc[chosen, "key"]))
            keys = [keys[i] for i in sample_indices(len(keys), max_per_task, seed)]
            out += [
                ImportItem(
                    source=source, relative=f"{name}/{key}", label=_reject(task), pixels=load_stored_image(store, key)
                )
                for key in keys
            ]
    return out


def other_body_part(source: str) -> bool:
    """Whether a reject-class image of ``source`` is a radiograph of another body part, fit to teach any task's
    reject class: one an importer took from a radiograph collection (FracAtlas's other regions), not a generated
    image, not another task's film (it may be of the task being imported) and not from a folder a user named
    (it may hold anything)."""
    return not source.startswith((NON_XRAY_SOURCE, f"{OTHER_TASK_SOURCE}:", FOLDER_SOURCE_PREFIX))


def folder_items(task: TaskSpec, folder: Path, *, seed: int, cap: int | None) -> list[ImportItem]:
    """Every image under ``folder`` (a seeded sample of at most ``cap``) labelled as the reject class.

    Raises:
        DataError: the folder does not exist.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: source folder not found")
    paths = image_files(root)
    source = f"{FOLDER_SOURCE_PREFIX}{task.body_part}:{root.resolve().name}"
    return [
        ImportItem(source=source, relative=paths[i].relative_to(root).as_posix(), label=_reject(task), path=paths[i])
        for i in sample_indices(len(paths), cap, seed)
    ]


def reject_items(task: TaskSpec, store: ObjectStore, sources: RejectSources, *, seed: int) -> list[ImportItem]:
    """The reject-class images ``sources`` names, placed in studies for a multi-view task (:func:`as_studies`)."""
    if task.reject is None:
        if sources.non_xray or sources.folders:
            raise ConfigError(f"task {task.name!r} has no reject class to put non-{task.body_part} images in")
        return []
    items = non_xray_items(task, sources.non_xray, seed=seed, size=sources.size) if sources.non_xray > 0 else []
    if sources.other_tasks:
        items += other_task_items(task, store, seed=seed, max_per_task=sources.other_tasks_max)
    for folder in sources.folders:
        items += folder_items(task, folder, seed=seed, cap=sources.folders_max)
    return as_studies(task, items)


def as_studies(task: TaskSpec, items: Sequence[ImportItem]) -> list[ImportItem]:
    """Reject images as studies of a multi-view task: each source's images, in order, fill studies that cycle
    through every view at once, then each single view (one-view tasks: unchanged). Each study is its own
    patient, so its images share a split."""
    if not task.multiview:
        return list(items)
    shapes = [list(task.views), *([view] for view in task.views)]
    out: list[ImportItem] = []
    by_source: dict[str, list[ImportItem]] = {}
    for item in items:
        by_source.setdefault(item.source, []).append(item)
    for source, group in by_source.items():
        position, study = 0, 0
        while position < len(group):
            views = shapes[study % len(shapes)][: len(group) - position]
            study_id = f"{source}:reject-{study:05d}"
            for view, item in zip(views, group[position : position + len(views)], strict=True):
                out.append(replace(item, study_id=study_id, view=view, patient_id=study_id, origin=source))
            position, study = position + len(views), study + 1
    return out


def _reject(task: TaskSpec) -> str:
    if task.reject is None:
        raise ConfigError(f"task {task.name!r} has no reject class")
    return task.reject
