"""The FastAPI app factory: models load at start-up, a background check follows registry promotions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from care_companion import REVIEW_WARNING, __version__
from care_companion.config import Settings, get_settings
from care_companion.errors import CareError, ServiceUnavailable
from care_companion.monitoring.metrics import ServiceMetrics
from care_companion.reconcile import sweep_orphans
from care_companion.records.db import check_migrated, database_unavailable, make_engine, session_factory
from care_companion.serving.admin_routes import admin_router
from care_companion.serving.auth import auth_router
from care_companion.serving.dicomweb_routes import dicomweb_router
from care_companion.serving.feedback_routes import feedback_router
from care_companion.serving.fhir_routes import fhir_router
from care_companion.serving.http_errors import install_error_handlers
from care_companion.serving.manager import ModelManager
from care_companion.serving.middleware import RequestGuard
from care_companion.serving.monitor import Monitor
from care_companion.serving.monitoring_routes import monitoring_router
from care_companion.serving.pages import pages_router
from care_companion.serving.persistence import RecordKeeper
from care_companion.serving.predict import Predictor
from care_companion.serving.records_routes import records_router
from care_companion.serving.release_routes import release_router
from care_companion.serving.routes import ops, predict_router
from care_companion.serving.shadow import ShadowScorer
from care_companion.serving.tally import ServingTally
from care_companion.storage import ObjectStore, store_from_settings
from care_companion.tasks import load_plugins, task_names

log = logging.getLogger(__name__)

SWEEP_STOP_WAIT_SECONDS = 10.0  # at shutdown, how long a sweep still running may take to finish

DESCRIPTION = f"""
Chest X-ray triage (normal, pneumonia, tuberculosis; anything that is not a chest X-ray is refused with 422)
and wrist fracture triage, with calibrated probabilities and an operating point chosen for high sensitivity.

**{REVIEW_WARNING}**

Errors are always JSON: `{{"error": CODE, "detail": TEXT}}`.
"""


async def _poll(models: ModelManager, every: float) -> None:
    """Follow registry promotions: look the served references up again every ``every`` seconds."""
    while True:
        await asyncio.sleep(every)
        try:
            changes = await models.refresh()
        except Exception:  # never let the poller die
            log.exception("model refresh failed")
            continue
        for task, change in changes.items():
            if change.startswith("swapped") or change.startswith("loaded"):
                log.info("%s: %s", task, change)


def sweep_once(sessions: sessionmaker[Session], store: ObjectStore, grace_seconds: float, when: str) -> None:
    """Delete orphan objects older than ``grace_seconds`` (left by a crash between a write and its commit);
    any failure, the database being down included, is only a warning. Blocking: run it in a thread."""
    try:
        report = sweep_orphans(sessions, store, older_than=timedelta(seconds=grace_seconds))
    except Exception as exc:  # never let the sweep stop or crash the service
        error = database_unavailable(exc) if isinstance(exc, DBAPIError) else exc  # no secrets in the log
        log.warning("orphan sweep %s failed: %s", when, getattr(error, "detail", error))
        return
    log.info("orphan sweep %s: %s", when, report.summary())
    if report.missing_objects:
        shown = ", ".join(report.missing_objects[:20])
        log.warning("records name %d objects the store lacks: %s", len(report.missing_objects), shown)


class OrphanSweeper:
    """Sweeps orphan objects once at start-up, then every ``every`` seconds (0: only the first).

    Stopping cancels the wait between sweeps at once; a sweep already running may finish first.
    """

    def __init__(self, sessions: sessionmaker[Session], store: ObjectStore, grace_seconds: float, every: float):
        self._args = (sessions, store, grace_seconds)
        self._every = every
        self._sweep: asyncio.Future[None] | None = None
        self._loop_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin sweeping in the background of the running event loop."""
        self._loop_task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        when = "at start-up"
        while True:
            self._sweep = asyncio.ensure_future(asyncio.to_thread(sweep_once, *self._args, when))
            await asyncio.shield(self._sweep)  # a cancel stops the loop, never the thread mid-sweep
            if not self._every:
                return
            await asyncio.sleep(self._every)
            when = "(scheduled)"

    async def stop(self, wait: float = SWEEP_STOP_WAIT_SECONDS) -> None:
        """Stop sweeping, giving a sweep in progress up to ``wait`` seconds to finish."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        if self._sweep is not None and not self._sweep.done():
            await asyncio.wait({self._sweep}, timeout=wait)


async def open_records(settings: Settings) -> tuple[Engine, sessionmaker[Session]]:
    """Connect to the records database, waiting up to ``db_wait_seconds`` for it to answer.

    Raises:
        ConfigError: the database is not migrated (the service refuses to start: run ``db upgrade``).
        ServiceUnavailable: it did not answer in time.
    """
    engine = make_engine(settings.db_url)
    deadline = time.monotonic() + settings.db_wait_seconds
    while True:
        try:
            await asyncio.to_thread(check_migrated, engine)
            return engine, session_factory(engine)
        except ServiceUnavailable as exc:
            if time.monotonic() >= deadline:
                engine.dispose()
                raise
            log.warning("%s; retrying", exc.detail)
            await asyncio.sleep(1.0)
        except Exception:
            engine.dispose()
            raise


def create_app(settings: Settings | None = None, *, tasks: tuple[str, ...] | None = None) -> FastAPI:
    """A ready-to-serve app; models are loaded when it starts (its lifespan), not here.

    Args:
        settings: configuration; default :func:`get_settings`.
        tasks: the tasks it serves; default every registered task (plug-ins of ``CARE_TASK_MODULES`` included).
    """
    settings = settings or get_settings()
    load_plugins(settings.task_modules)
    tasks = tuple(tasks or task_names())
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            engine, app.state.sessions = await open_records(settings)
            app.state.store = store_from_settings(settings)
            app.state.records = RecordKeeper(settings, app.state.sessions, app.state.store)
        except CareError as exc:
            log.error("the service cannot start: %s", exc.detail)
            raise
        models = ModelManager(settings, metrics, tasks)
        monitor = Monitor(settings, metrics, models, app.state.sessions)
        tally = ServingTally(app.state.sessions, settings.serving_stats_seconds)
        predictor = Predictor(settings, models, metrics, monitor, tally)
        shadows = ShadowScorer(predictor, app.state.sessions)
        app.state.records.on_kept = shadows.submit
        app.state.models, app.state.predictor, app.state.monitor = models, predictor, monitor
        changes = await models.refresh()
        for task, change in changes.items():
            log.info("%s: %s", task, change)
        sweeper = OrphanSweeper(
            app.state.sessions, app.state.store, settings.orphan_grace_seconds, settings.orphan_sweep_seconds
        )
        sweeper.start()
        monitor.start()
        tally.start()
        poller = (
            asyncio.create_task(_poll(models, settings.model_poll_seconds)) if settings.model_poll_seconds else None
        )
        try:
            yield
        finally:
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            await sweeper.stop()
            await shadows.drain()
            await monitor.stop()
            await models.close()
            await tally.stop()
            predictor.close()
            engine.dispose()
            log.info("service stopped: requests in flight finished, models closed")

    app = FastAPI(
        title="Care Companion",
        version=__version__,
        summary="AI assistance for radiology departments. Not a diagnosis: every result must be reviewed.",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings, app.state.metrics = settings, metrics
    install_error_handlers(app)
    routers = (
        predict_router(),
        ops,
        auth_router,
        records_router,
        fhir_router,
        dicomweb_router,
        feedback_router,
        admin_router,
        monitoring_router,
        release_router,
        pages_router,
    )
    for router in routers:
        app.include_router(router)

    def limit_for(path: str) -> int:
        several = path.endswith("/batch") or path.startswith("/dicomweb/")  # several images in one body
        return settings.max_batch_upload_bytes if several else settings.max_upload_bytes

    paths = frozenset(getattr(route, "path", "") for router in routers for route in router.routes)
    app.add_middleware(RequestGuard, metrics=metrics, limit_for=limit_for, paths=paths)
    return app
