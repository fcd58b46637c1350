"""Chest X-ray sources: the Kaggle combined pneumonia/tuberculosis set, class-folder trees, non-X-rays."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from care_companion.data.cache import load_stored_image
from care_companion.data.importer import ImportResult, import_images
from care_companion.data.manifest import load_manifest
from care_companion.data.synthetic_chest import make_unknown_images
from care_companion.errors import ConfigError, DataError
from care_companion.imaging.decode import DEFAULT_LIMITS, DecodeLimits
from care_companion.storage.base import ObjectStore
from care_companion.tasks import CHEST, TASKS

KAGGLE_DATASET = "rifatulmajumder23/combined-unknown-pneumonia-and-tuberculosis"
NON_XRAY_SOURCE = "generated-non-xray"
OTHER_TASK_SOURCE = "other-task"


def non_xray_images(n: int, *, seed: int, size: int = 256) -> list[tuple[str, str, str, np.ndarray]]:
    """``n`` images for the "not a chest X-ray" class: augmented scikit-image photos and synthetic scenes."""
    rng = np.random.default_rng(seed)
    return [
        (NON_XRAY_SOURCE, f"non-xray/{i:05d}.png", CHEST.reject or "unknown", image)
        for i, image in enumerate(make_unknown_images(rng, n, size))
    ]


def other_task_images(
    store: ObjectStore, *, seed: int, max_per_task: int | None = 300
) -> list[tuple[str, str, str, np.ndarray]]:
    """Radiographs of every other task's latest data set in ``store`` (their reject class left out), at most
    ``max_per_task`` of each (a seeded sample), as "unknown" images of the chest data set."""
    out: list[tuple[str, str, str, np.ndarray]] = []
    for name, task in sorted(TASKS.items()):
        if name == CHEST.name:
            continue
        try:
            frame = load_manifest(store, name).frame
        except DataError:  # no data set of that task yet
            continue
        keys = sorted(set(frame.loc[frame["label"] != (task.reject or "\0"), "key"]))
        if max_per_task is not None and len(keys) > max_per_task:
            pick = np.random.default_rng(seed).choice(len(keys), max_per_task, replace=False)
            keys = [keys[i] for i in sorted(pick)]
        source = f"{OTHER_TASK_SOURCE}:{name}"
        out += [(source, f"{name}/{key}", CHEST.reject or "unknown", load_stored_image(store, key)) for key in keys]
    return out


def import_chest(
    sources: list[Path],
    store: ObjectStore,
    *,
    seed: int,
    names: list[str] | None = None,
    non_xray: int = 400,
    non_chest: list[Path] | None = None,
    non_chest_max: int | None = 300,
    other_tasks: bool = True,
    other_tasks_max: int | None = 300,
    limits: DecodeLimits = DEFAULT_LIMITS,
    workers: int = 2,
) -> ImportResult:
    """Import chest X-ray class-folder trees (Kaggle layout or plain) as one data set.

    Args:
        sources: source root folders; class folders (normal, pneumonia, tuberculosis, unknown) at any depth.
        store: object store for images and manifest.
        seed: split seed (also seeds the generated non-X-ray images).
        names: source names to record (default: each folder's name).
        non_xray: generated non-X-ray images to add to the "unknown" class (0 for none).
        non_chest: folders of other images that are not chest X-rays (e.g. other body parts' radiographs),
            every image imported as "unknown".
        non_chest_max: at most this many images from each non-chest folder (a seeded sample).
        other_tasks: also add radiographs of the other tasks' latest data sets already in ``store`` (e.g. wrist
            films) to "unknown": other body parts' films teach the reject class what it must refuse.
        other_tasks_max: at most this many images from each other task's data set (a seeded sample).
        limits: the image sizes accepted; other images are skipped (too small, decompression bomb).
        workers: decoding processes.
    """
    names = names or [Path(s).resolve().name for s in sources]
    if len(names) != len(sources):
        raise ConfigError("give one --name per source folder")
    extra = non_xray_images(non_xray, seed=seed) if non_xray > 0 else []
    if other_tasks:
        extra += other_task_images(store, seed=seed, max_per_task=other_tasks_max)
    return import_images(
        CHEST,
        list(zip(names, [Path(s) for s in sources], strict=True)),
        store,
        seed=seed,
        extra=extra,
        labelled_folders=[
            (f"non-chest:{Path(f).resolve().name}", Path(f), CHEST.reject or "unknown", non_chest_max)
            for f in non_chest or []
        ],
        limits=limits,
        workers=workers,
    )


def fetch_chest(target: Path) -> Path:
    """Download and unpack the Kaggle chest set into ``target`` with the Kaggle API.

    Needs Kaggle credentials (``~/.kaggle/kaggle.json`` or ``KAGGLE_USERNAME`` and ``KAGGLE_KEY``) and the
    ``kaggle`` package (``pip install 'care-companion[kaggle]'``); fails at once, saying so, without them.
    """
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    has_env = bool(os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"))
    if not has_env and not (config_dir / "kaggle.json").is_file():
        raise ConfigError(
            "no Kaggle credentials: put your API token in ~/.kaggle/kaggle.json (Kaggle > Settings > "
            "Create New Token) or set KAGGLE_USERNAME and KAGGLE_KEY, then run this again; or download "
            f"https://www.kaggle.com/datasets/{KAGGLE_DATASET} yourself and use 'data import chest DIR'"
        )
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError as exc:
        raise ConfigError("the kaggle package is missing: pip install 'care-companion[kaggle]'") from exc
    api = KaggleApi()
    api.authenticate()
    target.mkdir(parents=True, exist_ok=True)
    api.dataset_download_files(KAGGLE_DATASET, path=str(target), unzip=True, quiet=False)
    return target
