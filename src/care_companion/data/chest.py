"""Chest X-ray sources: the Kaggle combined pneumonia/tuberculosis set and class-folder trees."""

from __future__ import annotations

import os
from pathlib import Path

from care_companion.data.importer import ImportResult, import_images
from care_companion.data.rejects import RejectSources, reject_items
from care_companion.errors import ConfigError
from care_companion.imaging.decode import DEFAULT_LIMITS, DecodeLimits
from care_companion.storage.base import ObjectStore
from care_companion.tasks import CHEST

KAGGLE_DATASET = "rifatulmajumder23/combined-unknown-pneumonia-and-tuberculosis"


def import_chest(
    sources: list[Path],
    store: ObjectStore,
    *,
    seed: int,
    names: list[str] | None = None,
    rejects: RejectSources = RejectSources(),
    limits: DecodeLimits = DEFAULT_LIMITS,
    workers: int = 2,
) -> ImportResult:
    """Import chest X-ray class-folder trees (Kaggle layout or plain) as one data set.

    Args:
        sources: source root folders; class folders (normal, pneumonia, tuberculosis, unknown) at any depth.
        store: object store for images and manifest.
        seed: split seed (also seeds the generated non-X-ray images).
        names: source names to record (default: each folder's name).
        rejects: what the "unknown" class gets besides the sources' own unknown folders: by default generated
            non-X-rays and the other tasks' radiographs already in ``store`` (e.g. wrist films), so other body
            parts are refused; also any folders of non-chest images (see ``data.rejects.RejectSources``).
        limits: the image sizes accepted; other images are skipped (too small, decompression bomb).
        workers: decoding processes.
    """
    names = names or [Path(s).resolve().name for s in sources]
    if len(names) != len(sources):
        raise ConfigError("give one --name per source folder")
    return import_images(
        CHEST,
        list(zip(names, [Path(s) for s in sources], strict=True)),
        store,
        seed=seed,
        items=reject_items(CHEST, store, rejects, seed=seed),
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
