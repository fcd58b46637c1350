"""Prediction use cases, free of HTTP: bytes in, a calibrated and reviewed-by-a-radiologist result out.

The routers only parse requests and call these; tests call them directly too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NoReturn

import numpy as np

from care_companion.config import Settings
from care_companion.errors import CareError, InvalidImageError, NotForTask, RequestError, error_code
from care_companion.imaging.decode import DecodeLimits
from care_companion.models.heatmap import shown, view_maps
from care_companion.models.ood import GateCheck
from care_companion.monitoring.metrics import ServiceMetrics
from care_companion.serving.engine import Inference, Prepared, ServedModel
from care_companion.serving.manager import ModelManager
from care_companion.serving.monitor import Monitor
from care_companion.serving.results import Interpretation, decision_rule, interpret
from care_companion.serving.schemas import (
    BatchItem,
    BatchResponse,
    Decision,
    ErrorBody,
    Heatmap,
    ModelRef,
    PredictionResult,
    ViewHeatmap,
)
from care_companion.serving.tally import ServingTally

WRIST_VIEWS = ("pa", "lateral")


@dataclass
class Upload:
    """One uploaded file: its name (for messages) and its bytes."""

    name: str
    data: bytes


@dataclass(frozen=True)
class Scored:
    """A model's answer on some films that nobody is shown (a shadow answer)."""

    label: str  # the decided class, or the task's refusal code when the model would refuse the films
    probabilities: dict[str, float]
    positive: bool
    refused: bool
    latency_ms: float


def _model_ref(model: ServedModel) -> ModelRef:
    return ModelRef(name=model.meta.task, version=model.source.version, alias=model.source.alias, demo=model.meta.demo)


def heatmap_of(
    model: ServedModel, inference: Inference, label: str, sizes: dict[str, tuple[int, int]]
) -> Heatmap | None:
    """The heat map of a decision (``label``) on each view read, at its film's ``sizes`` (None for a model
    exported without class maps)."""
    if inference.class_maps is None:
        return None
    task = model.task
    decided = task.index(label)
    maps = view_maps(task, inference.class_maps, inference.probabilities, decided, inference.present)
    return Heatmap(
        shows=shown(task, decided),
        views={
            view: ViewHeatmap(
                grid=np.round(grid, 4).tolist(),
                centres=model.meta.map_centres,
                height=sizes[view][0],
                width=sizes[view][1],
            )
            for view, grid in maps.items()
            if view in sizes
        },
    )


class Predictor:
    """Runs uploads through the served models; decoding happens in a worker pool, inference in micro-batches."""

    def __init__(
        self,
        settings: Settings,
        models: ModelManager,
        metrics: ServiceMetrics,
        monitor: Monitor,
        tally: ServingTally | None = None,
    ) -> None:
        self.settings = settings
        self.models = models
        self.metrics = metrics
        self.monitor = monitor
        self.tally = tally
        self.pool = ThreadPoolExecutor(max_workers=settings.decode_workers, thread_name_prefix="decode")
        self.limits = DecodeLimits.from_settings(settings)

    def close(self) -> None:
        """Stop the decoding pool."""
        self.pool.shutdown(wait=True, cancel_futures=True)

    @contextlib.contextmanager
    def _counted(self, model: ServedModel, started: float, role: str | None = None) -> Iterator[None]:
        """Count the block's request against the model's version (:class:`ServingTally`), when counting."""
        if self.tally is None:
            yield
            return
        with self.tally.timing(model.task_name, model.source.version, role or self.models.role(model), started):
            yield

    async def _preprocess(self, model: ServedModel, upload: Upload) -> Prepared:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.pool,
            lambda: model.preprocess_bytes(
                upload.data,
                name=upload.name,
                limits=self.limits,
            ),
        )

    async def predict(
        self, task: str, upload: Upload, *, request_id: str, started: float, patient: int | None = None
    ) -> PredictionResult:
        """One image of ``task``: a calibrated result, or an error (bad image, not an image of this task).

        Args:
            task: the task name (chest).
            upload: the file.
            request_id: id echoed in the result and the logs.
            started: ``time.perf_counter()`` when the request arrived, for the reported latency.
            patient: whose film it is (a canary answers its share of patients); None: production answers.

        Raises:
            InvalidImageError: the bytes are not a usable image (the reason says why).
            NotForTask: the image is not an image of this task (a photo, another body part).
            ServiceUnavailable: no model is loaded for the task, or the engine is overloaded.
        """
        async with self.models.lease(task, patient) as model:
            with self._counted(model, started):
                prepared = self._preprocess(model, upload)
                return await self._answer(model, prepared, upload.name, list(model.meta.views), request_id, started)

    async def _answer(
        self,
        model: ServedModel,
        preparing: Awaitable[Prepared],
        what: str,
        views_used: list[str],
        request_id: str,
        started: float,
    ) -> PredictionResult:
        """The result once ``preparing`` (the films decoded for ``model``) is done: a bad image is counted and
        raised, a good one inferred and interpreted (:meth:`_result`)."""
        try:
            prepared = await preparing
        except InvalidImageError as exc:
            self.metrics.observe_rejection(model.task_name, exc.reason)
            raise
        inference = await model.infer(prepared.input)
        return self._result(model, prepared, inference, what, views_used, request_id, started)

    def _refuse(self, model: ServedModel, what: str, why: str) -> NoReturn:
        """Refuse ``what`` as not a radiograph of the model's task (``why``: the score that says so), counting the
        rejection.

        Raises:
            NotForTask: always, with the task's refusal code.
        """
        spec = model.task
        error = NotForTask(
            f"{what}: this does not look like a {spec.body_part} radiograph ({why}); no finding was made. "
            f"Upload a {spec.body_part} radiograph.",
            task=spec.name,
            code=spec.refusal_code,
        )
        self.metrics.observe_rejection(spec.name, error.code)
        raise error

    def _decide(self, model: ServedModel, inference: Inference) -> tuple[GateCheck | None, Interpretation]:
        """The gate's check and the interpretation at the model's operating point of one inference."""
        found = interpret(
            inference.probabilities, model.task, model.predictor.thresholds, margin=self.settings.confidence_margin
        )
        return model.gate_check(inference), found

    def _result(
        self,
        model: ServedModel,
        prepared: Prepared,
        inference: Inference,
        what: str,
        views_used: list[str],
        request_id: str,
        started: float,
    ) -> PredictionResult:
        """Interpret calibrated probabilities at the bundle's operating point; a study missing some of the
        model's views is always low-confidence, saying which view is missing. The out-of-distribution gate is
        checked first: a view unlike the task's training films of that view is refused as the reject class is. The input
        goes to drift monitoring, a refused one included."""
        task = model.task.name
        gate, found = self._decide(model, inference)
        probs = inference.probabilities
        self.monitor.observe(
            model,
            prepared,
            probs,
            inference.embedding,
            label=found.label,
            rejected=found.rejected or (gate is not None and gate.refused),
            latency_s=time.perf_counter() - started,
        )
        if gate is not None and gate.refused:
            self._refuse(
                model,
                what,
                f"out-of-distribution score {gate.score:.2f} above the model's threshold {gate.threshold:.2f}",
            )
        if found.rejected:
            self._refuse(model, what, f"P({found.label}) = {found.probabilities[found.label]:.2f}")
        missing = [view for view in model.meta.views if view not in views_used]
        confidence, reasons = found.confidence, list(found.confidence_reasons)
        if missing:
            confidence = "low"
            reasons.append(
                f"only the {' and '.join(views_used)} view was read; the {' and '.join(missing)} view is missing, "
                f"and {model.task.serving.missing_view_note}"
            )
        self.metrics.observe_prediction(task, found.label, found.positive, found.probabilities[found.label], confidence)
        return PredictionResult(
            heatmap=heatmap_of(model, inference, found.label, prepared.sizes),
            request_id=request_id,
            task=task,
            label=found.label,
            probabilities=found.probabilities,
            decision=Decision(
                positive=found.positive,
                score=round(found.score, 6),
                threshold=found.threshold,
                rule=decision_rule(model.task, found.threshold),
            ),
            confidence=confidence,  # type: ignore[arg-type]
            confidence_reasons=reasons,
            views_used=views_used,
            model=_model_ref(model),
            latency_ms=round((time.perf_counter() - started) * 1000, 2),
        )

    async def predict_batch(
        self, task: str, uploads: list[Upload], *, request_id: str, started: float
    ) -> BatchResponse:
        """Several images in one request: results in input order, each failure reported on its own item."""
        limit = self.settings.batch_max_images
        if not uploads:
            raise RequestError("send at least one image in the 'files' field", code="no_images")
        if len(uploads) > limit:
            self.metrics.observe_rejection(task, "too_many_images")
            raise RequestError(
                f"{len(uploads)} images in one request; at most {limit} (CARE_BATCH_MAX_IMAGES)",
                code="too_many_images",
                status=413,
            )
        if self.models.get(task) is None:
            await self._require(task)  # the whole request gets 503, not one error per image

        async def one(index: int, upload: Upload) -> BatchItem:
            try:
                result = await self.predict(task, upload, request_id=f"{request_id}-{index}", started=started)
            except CareError as exc:
                error = ErrorBody(error=error_code(exc), detail=exc.detail)
                return BatchItem(index=index, filename=upload.name, ok=False, error=error)
            return BatchItem(index=index, filename=upload.name, ok=True, result=result)

        items = await asyncio.gather(*(one(i, u) for i, u in enumerate(uploads)))
        return BatchResponse(
            request_id=request_id, count=len(items), succeeded=sum(i.ok for i in items), items=list(items)
        )

    async def _require(self, task: str) -> None:
        async with self.models.lease(task):  # raises 503 when the task has no model
            return

    async def predict_study(
        self,
        task: str,
        views: dict[str, Upload | None],
        *,
        request_id: str,
        started: float,
        patient: int | None = None,
    ) -> PredictionResult:
        """A multi-view study (wrist: ``pa`` and ``lateral``); either view may be missing, and the result then
        says which views were read and is flagged low-confidence (``patient``: as for :meth:`predict`).

        Raises:
            RequestError: no view at all (422 ``no_images``), or the loaded model does not read studies (503).
            InvalidImageError: a view is not a usable image (the message names its file).
            ServiceUnavailable: no model is loaded for the task, or the engine is overloaded.
        """
        given = {name: upload for name, upload in views.items() if upload is not None}
        async with self.models.lease(task, patient) as model:
            with self._counted(model, started):
                if not given:
                    raise RequestError(f"send at least one view: {', '.join(views)}", code="no_images")
                what = " + ".join(upload.name for upload in given.values())
                used = [view for view in model.meta.views if view in given]
                return await self._answer(model, self._prepare_study(model, given), what, used, request_id, started)

    async def _prepare_study(self, model: ServedModel, given: dict[str, Upload]) -> Prepared:
        """A study's films decoded and preprocessed for ``model`` in the worker pool.

        Raises:
            RequestError: the model does not read studies (503).
            InvalidImageError: a view is not a usable image.
        """
        if not model.meta.multiview:
            raise RequestError(
                f"the loaded {model.task_name} model ({model.source.reference}) is not a multi-view study model",
                code="model_unsupported",
                status=503,
            )
        films = {view: (upload.data, upload.name) for view, upload in given.items()}
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, lambda: model.preprocess_study(films, limits=self.limits))

    async def score_unseen(self, model: ServedModel, views: dict[str, Upload]) -> Scored:
        """``model``'s answer on films another model answered, shown to nobody (shadow mode): the same gate,
        reject class and operating point as a served answer; the films join the model's drift window.

        Raises:
            InvalidImageError: the films do not decode for this model.
        """
        started = time.perf_counter()
        with self._counted(model, started, role="shadow"):
            if model.meta.multiview:
                prepared = await self._prepare_study(model, views)
            else:
                prepared = await self._preprocess(model, next(iter(views.values())))
            inference = await model.infer(prepared.input)
            gate, found = self._decide(model, inference)
            refused = found.rejected or (gate is not None and gate.refused)
            self.monitor.observe(
                model, prepared, inference.probabilities, inference.embedding, label=found.label, rejected=refused
            )
            return Scored(
                label=model.task.refusal_code if refused else found.label,
                probabilities=found.probabilities,
                positive=found.positive and not refused,
                refused=refused,
                latency_ms=round((time.perf_counter() - started) * 1000, 2),
            )
