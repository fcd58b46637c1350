"""Which model each task serves, and swapping in a newly promoted version without dropping requests.

A task's model comes from a configured reference (a bundle folder or a registry URI, ``CARE_MODELS__<task>``) or,
by default, from the registry alias ``serve_alias`` (production), falling back to ``serve_fallback_alias``
(staging). :meth:`ModelManager.refresh` looks the reference up again and, when it points at another version,
loads it, swaps it in and closes the old one once the requests holding it have finished.

With ``CARE_CANARY_PERCENT`` above 0 (or ``CARE_CANARY_MODE=shadow``), a task served from the registry also serves
the version under the canary alias (``CARE_CANARY_ALIAS``), when there is one and it is not production's: that
share of patients (:func:`~care_companion.registry.canary.routes_to_canary`) is answered by it, everyone else by
production; in shadow mode it also scores production's studies (:mod:`care_companion.serving.shadow`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

from care_companion.config import Settings
from care_companion.errors import CareError, ServiceUnavailable
from care_companion.models.bundle import BUNDLE_FILE
from care_companion.monitoring.metrics import ServiceMetrics
from care_companion.registry.canary import routes_to_canary
from care_companion.registry.models import alias_version, resolve_bundle
from care_companion.registry.refs import ModelRef, RefKind
from care_companion.serving.engine import ModelSource, ServedModel, start_model

log = logging.getLogger(__name__)


def _aliases(settings: Settings) -> list[str]:
    return [a for a in (settings.serve_alias, settings.serve_fallback_alias) if a]


def find_source(task: str, settings: Settings) -> ModelSource | str:
    """Where ``task``'s model to serve is (the folder not yet resolved), or why there is none (blocking)."""
    configured = settings.model_for(task)
    if configured:
        ref = ModelRef.parse(configured)
        if ref.kind is RefKind.ALIAS:  # follow the alias, so a promotion is noticed
            number = alias_version(ref.name, ref.alias, settings)
            if number is None:
                return f"{ref}: the registry has no model {ref.name!r} with alias {ref.alias!r}"
            return ModelSource(ModelRef.registered(ref.name, number).uri, version=str(number), alias=ref.alias)
        if ref.kind is RefKind.VERSION:
            return ModelSource(ref.text, version=str(ref.version))
        if ref.kind is RefKind.RUN:
            return ModelSource(ref.text)
        return ModelSource(ref.text, stamp=_folder_stamp(ref.directory))
    aliases = _aliases(settings)
    for alias in aliases:
        number = alias_version(task, alias, settings)
        if number is not None:
            return ModelSource(ModelRef.registered(task, number).uri, version=str(number), alias=alias)
    return (
        f"no {task} model is registered under the alias {' or '.join(aliases) or '(none configured)'}; "
        f"train one (care-companion train {task}) or set CARE_MODELS__{task} to a bundle folder"
    )


def find_canary(task: str, settings: Settings) -> ModelSource | None:
    """The canary version of ``task`` to serve beside production, or None: no canary share, a task whose model is
    configured explicitly, or no version under the canary alias (blocking)."""
    if not settings.canary_enabled or settings.model_for(task):
        return None
    number = alias_version(task, settings.canary_alias, settings)
    if number is None:
        return None
    return ModelSource(ModelRef.registered(task, number).uri, version=str(number), alias=settings.canary_alias)


def _folder_stamp(folder: Path) -> str | None:
    """A bundle folder's identity for change detection: the modification time of its metadata."""
    meta = folder / BUNDLE_FILE
    try:
        return f"mtime:{meta.stat().st_mtime_ns}"
    except OSError:
        return None


class ModelManager:
    """The served model of every task, swapped atomically on refresh."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics, tasks: tuple[str, ...]) -> None:
        self.settings = settings
        self.metrics = metrics
        self.tasks = tasks
        self._models: dict[str, ServedModel] = {}
        self._canaries: dict[str, ServedModel] = {}
        self.unavailable: dict[str, str] = {}
        self._lock = asyncio.Lock()
        for task in tasks:
            metrics.queue_depth.labels(task).set_function(partial(self._depth, task))
            metrics.set_model(task, None)

    def _depth(self, task: str) -> float:
        model = self._models.get(task)
        return float(model.batcher.depth) if model else 0.0

    def get(self, task: str) -> ServedModel | None:
        """The model serving ``task`` now, if any."""
        return self._models.get(task)

    def loaded(self) -> list[ServedModel]:
        """Every loaded production model (one per task)."""
        return [self._models[t] for t in self.tasks if t in self._models]

    def canaries(self) -> list[ServedModel]:
        """Every loaded canary model (at most one per task)."""
        return [self._canaries[t] for t in self.tasks if t in self._canaries]

    def choose(self, task: str, patient: int | None = None) -> ServedModel | None:
        """The model that answers ``patient``'s studies of ``task`` now: the canary for its share of patients, else
        production."""
        canary = self._canaries.get(task)
        if canary is not None and routes_to_canary(task, patient, self.settings.canary_percent):
            return canary
        return self._models.get(task)

    def role(self, model: ServedModel) -> str:
        """``canary`` for a task's canary model, else ``production`` (what the traffic counts file it under)."""
        return "canary" if self._canaries.get(model.task_name) is model else "production"

    def shadow_for(self, task: str, answered_by: str | None) -> ServedModel | None:
        """In shadow mode, the canary that also scores a study version ``answered_by`` answered, when that was not
        the canary itself (None otherwise)."""
        canary = self._canaries.get(task)
        if self.settings.canary_mode != "shadow" or canary is None or canary.source.version == answered_by:
            return None
        return canary

    @asynccontextmanager
    async def lease(self, task: str, patient: int | None = None) -> AsyncIterator[ServedModel]:
        """The model for ``patient``'s study of ``task`` (:meth:`choose`), held for one request; 503
        (ServiceUnavailable) when there is none."""
        model = self.choose(task, patient)
        if model is None:
            why = self.unavailable.get(task, f"no {task} model is loaded")
            raise ServiceUnavailable(f"no {task} model is available: {why}", code="model_unavailable")
        async with model.lease() as held:
            yield held

    async def refresh(self, tasks: tuple[str, ...] | None = None) -> dict[str, str]:
        """Look every task's reference up again and swap in changed models; returns what happened per task."""
        async with self._lock:
            changes: dict[str, str] = {}
            for task in tasks or self.tasks:
                changes[task] = await self._refresh_one(task)
                canary = await self._refresh_canary(task)
                if canary:
                    changes[task] += f"; canary {canary}"
            return changes

    async def _refresh_canary(self, task: str) -> str:
        """Load, swap or drop the task's canary; what happened ('' when there is none, as before)."""
        current = self._canaries.get(task)
        try:
            found = await asyncio.to_thread(find_canary, task, self.settings)
        except Exception as exc:  # a registry outage keeps what is served
            log.warning("could not look up the %s canary: %s", task, exc)
            return f"kept: registry lookup failed ({type(exc).__name__}: {exc})" if current else ""
        production = self._models.get(task)
        if found is not None and production is not None and production.source.identity == found.identity:
            found = None  # the canary version is production's: nothing to compare
        if found is None:
            if current is None:
                return ""
            del self._canaries[task]
            await current.close()
            return f"ended ({current.source.reference})"
        if current is not None and current.source.identity == found.identity:
            return f"unchanged: {found.reference}"
        try:
            model = await asyncio.to_thread(self._open, task, found)
        except Exception as exc:
            detail = exc.detail if isinstance(exc, CareError) else f"{type(exc).__name__}: {exc}"
            log.error("could not load the %s canary %s: %s", task, found.reference, detail)
            return f"not loaded: {found.reference}: {detail}"
        model.batcher.start()
        self._canaries[task] = model
        log.info("serving %s canary %s to %g%% of patients", task, found.reference, self.settings.canary_percent)
        if current is not None:
            await current.close()
            return f"swapped {current.source.reference} -> {found.reference}"
        return f"loaded {found.reference} for {self.settings.canary_percent:g}% of patients"

    async def _refresh_one(self, task: str) -> str:
        current = self._models.get(task)
        try:
            found = await asyncio.to_thread(find_source, task, self.settings)
        except CareError as exc:
            found = exc.detail
        except Exception as exc:  # a registry outage must not take the service down
            log.warning("could not look up the %s model: %s", task, exc)
            return f"kept: registry lookup failed ({type(exc).__name__}: {exc})"
        configured = bool(self.settings.model_for(task))
        self.metrics.model_expected.labels(task).set(1 if configured or not isinstance(found, str) else 0)
        if isinstance(found, str):
            if current is None:
                self.unavailable[task] = found
                return f"unavailable: {found}"
            return f"kept {current.source.reference}: {found}"
        reference = found.reference
        if current is not None and current.source.identity == found.identity:
            current.source.alias = found.alias
            return f"unchanged: {reference}"
        try:
            model = await asyncio.to_thread(self._open, task, found)
        except Exception as exc:
            detail = exc.detail if isinstance(exc, CareError) else f"{type(exc).__name__}: {exc}"
            log.error("could not load the %s model %s: %s", task, reference, detail)
            if current is None:
                self.unavailable[task] = f"{reference} could not be loaded: {detail}"
                return f"unavailable: {detail}"
            return f"kept {current.source.reference}: {reference} could not be loaded: {detail}"
        model.batcher.start()
        self._models[task] = model
        self.unavailable.pop(task, None)
        self.metrics.set_model(task, self.model_labels(model))
        log.info("serving %s model %s (version %s, alias %s)", task, reference, found.version, found.alias)
        if current is not None:
            await current.close()
            return f"swapped {current.source.reference} -> {reference}"
        return f"loaded {reference}"

    def _open(self, task: str, source: ModelSource) -> ServedModel:
        source.directory = resolve_bundle(source.reference, self.settings)
        model = start_model(task, source, self.settings, self.metrics)
        if model.meta.task != task:
            raise ServiceUnavailable(f"{source.reference} is a {model.meta.task!r} model, not a {task!r} model")
        return model

    @staticmethod
    def model_labels(model: ServedModel) -> dict[str, str]:
        """The info-metric labels of a served model."""
        return {
            "name": model.meta.task,
            "version": model.source.version or "",
            "alias": model.source.alias or "",
            "source": model.source.reference,
            "backbone": model.meta.backbone,
            "precision": model.predictor.precision,
            "dataset_version": model.meta.dataset_version,
            "demo": str(model.meta.demo).lower(),
        }

    async def close(self) -> None:
        """Close every model (waiting for the requests holding them)."""
        for task in list(self._models):
            await self._models.pop(task).close()
        for task in list(self._canaries):
            await self._canaries.pop(task).close()
