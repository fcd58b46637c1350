"""A served model: one bundle's ONNX Runtime session, its micro-batcher and the leases of requests using it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from care_companion.config import Settings
from care_companion.errors import ModelError
from care_companion.imaging.decode import DecodeLimits, decode_image
from care_companion.models.bundle import BundleMeta
from care_companion.models.ood import GateCheck, LoadedGate, load_gate
from care_companion.models.predictor import BundlePredictor, present_mask, softmax
from care_companion.monitoring.drift import DriftWindow
from care_companion.monitoring.features import describe
from care_companion.monitoring.metrics import ServiceMetrics
from care_companion.monitoring.profile import load_bundle_profile
from care_companion.serving.batcher import Input, MicroBatcher
from care_companion.tasks import TaskSpec

log = logging.getLogger(__name__)


@dataclass
class ModelSource:
    """Where a served model came from."""

    reference: str
    directory: Path | None = None
    version: str | None = None
    alias: str | None = None
    stamp: str | None = None

    @property
    def identity(self) -> tuple[str, str | None, str | None]:
        """What must change for a reload to swap the model: reference, registry version, folder stamp."""
        return (self.reference, self.version, self.stamp)


@dataclass(frozen=True)
class Prepared:
    """An upload made ready for the engine: the model input and its images' drift features."""

    input: Input
    features: tuple[np.ndarray, ...]
    histograms: tuple[np.ndarray, ...]
    sizes: dict[str, tuple[int, int]]  # each given view's film (height, width), by view name


def _described(images: list[np.ndarray]) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    pairs = [describe(image) for image in images]
    return tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)


@dataclass(frozen=True)
class Inference:
    """One input's pass through the engine."""

    probabilities: np.ndarray  # [C], calibrated
    embedding: np.ndarray | None  # [D] penultimate layer (drift monitoring); None for a model without it
    view_features: np.ndarray | None  # what the out-of-distribution gate scores ([V, F], or [D] for one view)
    present: np.ndarray | None  # [V] views given, for a multi-view input
    class_maps: np.ndarray | None = None  # [C, h, w] or [V, C, h, w] (heat maps); None for a model without them


@dataclass
class ServedModel:
    """A loaded bundle ready to answer: preprocessing, batched engine, calibrated probabilities."""

    task_name: str
    source: ModelSource
    predictor: BundlePredictor
    batcher: MicroBatcher
    drift: DriftWindow
    ood: LoadedGate | None = None  # the bundle's out-of-distribution gate; None for bundles made without one
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    active: int = 0

    @property
    def meta(self) -> BundleMeta:
        """The bundle metadata."""
        return self.predictor.meta

    @property
    def task(self) -> TaskSpec:
        """The task the bundle was trained for."""
        return self.meta.task_spec()

    def preprocess_bytes(self, data: bytes, *, name: str, limits: DecodeLimits) -> Prepared:
        """Decode untrusted bytes and make the model input [1, S, S] (blocking: run it in a worker thread)."""
        image = decode_image(data, name=name, limits=limits)
        size = {self.meta.views[0]: (image.shape[0], image.shape[1])}
        return Prepared(self.predictor.preprocess([image])[0], *_described([image]), size)

    def preprocess_study(self, views: dict[str, tuple[bytes, str]], *, limits: DecodeLimits) -> Prepared:
        """Decode the views of one study ({view: (bytes, name)}) and make the model's feed without batch axis
        (blocking: run it in a worker thread). A view that is not a usable image raises, naming the file."""
        images = {view: decode_image(data, name=name, limits=limits) for view, (data, name) in views.items()}
        feed = {name: value[0] for name, value in self.predictor.preprocess_studies([images]).items()}
        sizes = {view: (image.shape[0], image.shape[1]) for view, image in images.items()}
        return Prepared(feed, *_described(list(images.values())), sizes)

    async def infer(self, tensor: Input) -> Inference:
        """Calibrated class probabilities [C] of one preprocessed input (or study feed), through the
        micro-batcher, with its embedding, view features and class maps (None for a model exported without
        them)."""
        output = await self.batcher.submit(tensor)
        logits, embedding, views, maps = (
            (*output, None)[:4] if isinstance(output, tuple) else (output, None, None, None)
        )
        probs = softmax(logits[None, :], self.predictor.temperature)[0]
        return Inference(probs, embedding, views, present_mask(tensor), maps)

    def gate_check(self, inference: Inference) -> GateCheck | None:
        """The out-of-distribution gate's verdict on one inference (None for a bundle without a gate)."""
        if self.ood is None or inference.embedding is None or inference.view_features is None:
            return None
        return self.ood.check(inference.embedding, inference.view_features, inference.present, self.predictor.precision)

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[ServedModel]:
        """Hold the model for one request, so a reload waits for the request before closing it."""
        self.active += 1
        try:
            yield self
        finally:
            self.active -= 1

    async def close(self) -> None:
        """Wait for requests holding the model, then stop its batcher."""
        while self.active:
            await asyncio.sleep(0.01)
        await self.batcher.close()


def start_model(task_name: str, source: ModelSource, settings: Settings, metrics: ServiceMetrics) -> ServedModel:
    """Open a bundle's engine (blocking) and wrap it with a micro-batcher; call :meth:`MicroBatcher.start` next."""
    if source.directory is None:
        raise ValueError(f"{source.reference}: resolve the bundle folder before starting it")
    predictor = BundlePredictor(
        source.directory, threads=settings.inference_threads, precision=settings.engine_precision, spin=False
    )
    ood = load_gate(source.directory, predictor.meta.ood) if predictor.has_embedding else None
    batcher = MicroBatcher(
        predictor.served_outputs if predictor.has_embedding else predictor.logits,
        max_batch=settings.max_batch_size,
        max_wait_ms=settings.max_wait_ms,
        max_queue=settings.max_queue,
        on_batch=lambda size, seconds: metrics.observe_batch(task_name, size, seconds),
        name=task_name,
    )
    return ServedModel(
        task_name=task_name,
        source=source,
        predictor=predictor,
        batcher=batcher,
        drift=drift_window(predictor, source, settings),
        ood=ood,
    )


def drift_window(predictor: BundlePredictor, source: ModelSource, settings: Settings) -> DriftWindow:
    """A fresh drift window for a model being loaded, against its bundle's reference profile when it has one."""
    profile, why = None, None
    if not predictor.has_embedding:
        why = "the model was exported without an embedding output; retrain or re-export it for drift monitoring"
    else:
        try:
            profile = load_bundle_profile(predictor.directory)
        except ModelError as exc:
            why = exc.detail
            log.warning("drift monitoring is off for %s: %s", source.reference, why)
    return DriftWindow(
        predictor.meta.task_spec(),
        profile,
        precision=predictor.precision,
        size=settings.drift_window,
        min_images=settings.drift_min_images,
        alpha=settings.drift_alpha,
        permutations=settings.drift_permutations,
        model_version=source.version,
        unavailable=why,
    )
