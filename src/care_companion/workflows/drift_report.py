"""Offline drift: compare a folder of images with a model's reference profile and write an HTML report.

The folder's images go, as observations, into a :class:`~care_companion.monitoring.drift.DriftWindow` as large
as the folder, decoded, scored and decided exactly as the service does, so the offline verdict is the one the
service would reach on the same inputs. ``care-companion drift profile`` (:func:`rebuild_profile`) computes the
reference profile of a bundle trained before profiles existed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field

from care_companion.config import Settings
from care_companion.data.cache import build_cache
from care_companion.data.folders import IMAGE_SUFFIXES, image_files
from care_companion.data.manifest import load_manifest
from care_companion.errors import ConfigError, DataError, InvalidImageError
from care_companion.imaging.decode import DEFAULT_LIMITS, DecodeLimits, decode_image
from care_companion.imaging.preprocess import resize_square
from care_companion.models.bundle import load_meta
from care_companion.models.predictor import BundlePredictor
from care_companion.monitoring.drift import DriftStatus, DriftWindow, Observation
from care_companion.monitoring.features import describe
from care_companion.monitoring.profile import ReferenceProfile, load_bundle_profile
from care_companion.monitoring.report_html import ReportContext, SkippedFile, write_report
from care_companion.parallel import parallel_map
from care_companion.registry.models import alias_version, resolve_bundle
from care_companion.registry.refs import ModelRef, RefKind
from care_companion.storage import store_from_settings
from care_companion.tasks import TaskSpec
from care_companion.workflows.profiling import build_profile
from care_companion.workflows.scoring import score_feed
from care_companion.workflows.training import split_arrays

CHUNK = 256  # images preprocessed and scored at a time (bounds the float32 batch in memory)
MIN_IMAGES = 10


class FolderDrift(DriftStatus):
    """A drift check of a folder of images: the window's status plus where the report went and what was skipped."""

    report: Path
    folder: Path
    bundle_dir: Path
    files: int = Field(description="Candidate image files found under the folder.")
    skipped: list[SkippedFile] = Field(default_factory=list)


_Read = tuple[np.ndarray, np.ndarray, np.ndarray]  # features, histogram, image at the model's input size


def _read(args: tuple[Path, str, int, DecodeLimits]) -> _Read | SkippedFile:
    """Decode one file as the service decodes an upload: its drift features and its model-size image."""
    path, name, size, limits = args
    try:
        data = path.read_bytes()
    except OSError as exc:
        return SkippedFile(path=name, reason="unreadable", detail=f"{name}: cannot read the file ({exc.strerror})")
    try:
        image = decode_image(data, name=name, limits=limits)
        features, histogram = describe(image)
        return features, histogram, resize_square(image, size)
    except InvalidImageError as exc:
        return SkippedFile(path=name, reason=exc.reason, detail=exc.detail)
    except ValueError as exc:  # describe/resize on an odd array: never stop the report for one file
        return SkippedFile(path=name, reason="unsupported", detail=f"{name}: {exc}")


def _view_for(task: TaskSpec, view: str | None) -> str:
    """The view each image is taken as: the given one (checked against the task), else the task's first."""
    if view is None:
        return task.views[0]
    if view not in task.views:
        raise ConfigError(f"unknown view {view!r} for the {task.name} model; use one of {', '.join(task.views)}")
    return view


def image_paths(folder: Path) -> list[Path]:
    """Candidate image files under ``folder`` (any depth).

    Raises:
        DataError: the folder does not exist or holds no image files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found (--current must be a folder of images)")
    paths = image_files(folder)
    if not paths:
        kinds = ", ".join(sorted(s.lstrip(".") for s in IMAGE_SUFFIXES if s))
        raise DataError(f"{folder}: no image files found (looked for {kinds} files at any depth)")
    return paths


def observe_folder(
    predictor: BundlePredictor,
    folder: Path,
    task: TaskSpec,
    *,
    view: str | None = None,
    limits: DecodeLimits = DEFAULT_LIMITS,
    workers: int = 1,
) -> tuple[list[Observation], list[SkippedFile]]:
    """Every image under ``folder`` as the drift window's observation, and the files that could not be read.

    Args:
        predictor: the model whose reference the images are compared with.
        folder: images at any depth (PNG, JPEG, DICOM, ...); one image is one input.
        task: the model's task.
        view: for a multi-view model, the view every image is taken as (a one-view study); default the first.
        limits: the image sizes accepted; other files are skipped (as the service refuses them).
        workers: decoding processes.
    """
    folder = Path(folder)
    as_view = _view_for(task, view)
    paths = image_paths(folder)
    size = predictor.meta.input_size
    work = [(p, str(p.relative_to(folder)), size, limits) for p in paths]
    read = list(parallel_map(_read, work, workers=workers, description=f"decoding {len(paths)} images"))
    skipped = [item for item in read if isinstance(item, SkippedFile)]
    good = [item for item in read if not isinstance(item, SkippedFile)]
    reject = task.index(task.reject) if task.reject is not None else -1
    observations: list[Observation] = []
    for start in range(0, len(good), CHUNK):
        part = good[start : start + CHUNK]
        images = [image for _, _, image in part]
        feed = (
            predictor.preprocess_studies([{as_view: image} for image in images])
            if predictor.meta.multiview
            else predictor.preprocess(images)
        )
        scores = score_feed(predictor, feed, task)  # decided by the rule the service answers with
        for i, (features, histogram, _) in enumerate(part):
            observations.append(
                Observation(
                    features=(features,),
                    histograms=(histogram,),
                    embedding=None if scores.embeddings is None else scores.embeddings[i],
                    probabilities=scores.probabilities[i],
                    decided=int(scores.decided[i]),
                    rejected=reject == int(scores.decided[i]),
                )
            )
    return observations, skipped


def _model_version(reference: str, settings: Settings) -> str | None:
    """The registry version a model reference names (None for a bundle folder or a run)."""
    ref = ModelRef.parse(reference)
    if ref.kind is RefKind.ALIAS:
        number = alias_version(ref.name, ref.alias, settings)
        return None if number is None else str(number)
    return str(ref.version) if ref.kind is RefKind.VERSION else None


def drift_report(
    reference: str,
    folder: Path,
    task: str | None,
    settings: Settings,
    out: Path,
    *,
    view: str | None = None,
    precision: str | None = None,
    min_images: int = MIN_IMAGES,
    workers: int = 1,
) -> FolderDrift:
    """Test the images under ``folder`` against the reference profile of the model ``reference`` and write the
    self-contained HTML report to ``out``.

    Args:
        reference: bundle folder or registry URI (``models:/chest@production``, ``models:/chest/3``).
        folder: the images to check (any depth); files that cannot be decoded are listed, not fatal.
        task: the task the model must be for (None: the model's).
        settings: drift alpha and permutations, decoding limits, model precision, seed.
        out: the HTML file to write.
        view: for a multi-view model, the view every image is taken as (default: the task's first).
        precision: the model file to run ("auto", "fp32", "int8"; default: the service's ``engine_precision``).
        min_images: images needed before a family is tested.
        workers: decoding processes.

    Raises:
        DataError: the folder is missing, holds no image files, or fewer than ``min_images`` could be read.
        ModelError: the model is missing or has no reference profile.
        ConfigError: the model is for another task, or the view is not one of its views.
    """
    folder = Path(folder)
    paths = image_paths(folder)  # fail on a bad folder before resolving (maybe downloading) the model
    bundle_dir = resolve_bundle(reference, settings)
    meta = load_meta(bundle_dir)
    if task is not None and task != meta.task:
        raise ConfigError(f"{reference} is a {meta.task} model, not a {task} model")
    spec = meta.task_spec()
    as_view = _view_for(spec, view)
    profile = load_bundle_profile(bundle_dir)
    predictor = BundlePredictor(bundle_dir, precision=precision or settings.engine_precision)
    observations, skipped = observe_folder(
        predictor,
        folder,
        spec,
        view=as_view,
        limits=DecodeLimits.from_settings(settings),
        workers=workers,
    )
    if len(observations) < min_images:
        raise DataError(
            f"{folder}: only {len(observations)} of {len(paths)} image files could be read "
            f"({len(skipped)} skipped); a drift test needs at least {min_images}"
        )
    window = DriftWindow(
        spec,
        profile,
        precision=predictor.precision,
        size=len(observations),
        min_images=min_images,
        alpha=settings.drift_alpha,
        permutations=settings.drift_permutations,
        model_version=_model_version(reference, settings),
    )
    for observation in observations:
        window.observe(observation)
    status = window.check(seed=settings.seed)
    context = ReportContext(
        model=reference,
        bundle_dir=str(bundle_dir),
        model_version=status.model_version,
        task=spec.name,
        precision=predictor.precision,
        dataset_version=meta.dataset_version,
        folder=str(folder),
        files=len(paths),
        permutations=settings.drift_permutations,
        reject_class=spec.reject,
        view=as_view if meta.multiview else None,
    )
    written = write_report(
        Path(out), status=status, profile=profile, observations=observations, context=context, skipped=skipped
    )
    return FolderDrift(
        **status.model_dump(), report=written, folder=folder, bundle_dir=bundle_dir, files=len(paths), skipped=skipped
    )


def rebuild_profile(reference: str, settings: Settings, *, max_images: int = 1000) -> tuple[Path, ReferenceProfile]:
    """(Re)compute the reference profile of the bundle ``reference`` from the data-set version it was trained on
    (``dataset_version`` in its ``bundle.json``), loaded from the object store; returns the bundle folder and
    the profile written into it.

    Raises:
        DataError: the bundle records no data-set version, that version is not in the object store, or it has
            no train or validation split.
    """
    bundle_dir = resolve_bundle(reference, settings)
    meta = load_meta(bundle_dir)
    task = meta.task_spec()
    version = meta.dataset_version
    if not version:
        raise DataError(f"{reference}: the bundle records no data-set version, so its training data is unknown")
    store = store_from_settings(settings)
    try:
        manifest = load_manifest(store, task.name, version)
    except DataError as exc:
        raise DataError(
            f"{reference} was trained on {task.name} data-set version {version}, which is not in the object store "
            f"{store.uri('')}; set CARE_OBJECT_STORE to the store it was trained from"
        ) from exc
    images = build_cache(store, manifest, meta.input_size, settings.cache_dir)
    splits = split_arrays(manifest, images, task)
    for needed in ("train", "val"):
        if needed not in splits:
            raise DataError(f"{task.name} data-set version {version} has no {needed} split")
    profile = build_profile(
        bundle_dir,
        task,
        store=store,
        manifest=manifest,
        train=splits["train"],
        val=splits["val"],
        max_images=max_images,
        seed=settings.seed,
    )
    return bundle_dir, profile
