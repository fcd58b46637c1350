"""Decoded-image cache: every image of a data set decoded and resized once, kept as a uint8 array on disk."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from care_companion.data.manifest import Manifest
from care_companion.imaging.preprocess import resize_square
from care_companion.progress import progress_bar
from care_companion.storage.base import ObjectStore


def cache_path(cache_dir: Path, manifest: Manifest, size: int) -> Path:
    """Where the cache of one data-set version at one input size lives."""
    return Path(cache_dir) / f"{manifest.task}-{manifest.version}-{size}.npy"


def load_stored_image(store: ObjectStore, key: str) -> np.ndarray:
    """Read a processed (8-bit grayscale PNG) image from the object store."""
    with Image.open(io.BytesIO(store.get_bytes(key))) as im:
        return np.asarray(im.convert("L"))


def build_cache(store: ObjectStore, manifest: Manifest, size: int, cache_dir: Path) -> np.ndarray:
    """All manifest images as a read-only [N, size, size] uint8 array in manifest row order.

    The array is a memory map of a ``.npy`` file written once (atomically) and reused by later runs.
    """
    path = cache_path(cache_dir, manifest, size)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        frame: pd.DataFrame = manifest.frame
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(frame), size, size))
        with progress_bar() as bar:
            for i, key in enumerate(bar.track(list(frame["key"]), description=f"caching images at {size}px")):
                out[i] = resize_square(load_stored_image(store, key), size)
        out.flush()
        del out
        tmp.replace(path)
    return np.load(path, mmap_mode="r")
