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
from care_companion.serving.auth import auth_router
from care_companion.serving.feedback_routes import feedback_router
from care_companion.serving.http_errors import install_error_handlers
from care_companion.serving.manager import SERVED_TASKS, ModelManager
from care_companion.serving.middleware import RequestGuard
from care_companion.serving.persistence import RecordKeeper
from care_companion.serving.predict import Predictor
from care_companion.serving.records_routes import records_router
from care_companion.serving.routes import ops, predict
from care_companion.storage import ObjectStore, store_from_settings

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


async def sweep_once(sessions: sessionmaker[Session], store: ObjectStore, grace_seconds: float, when: str) -> None:
    """Delete orphan objects older than ``grace_seconds`` (left by a crash between a write and its commit)
    in a worker thread; any failure, the database being down included, is only a warning."""
    try:
        report = await asyncio.to_thread(sweep_orphans, sessions, store, older_than=timedelta(seconds=grace_seconds))
    except Exception as exc:  # never let the sweep stop or crash the service
        error = database_unavailable(exc) if isinstance(exc, DBAPIError) else exc  # no secrets in the log
        log.warning("orphan sweep %s failed: %s", when, getattr(error, "detail", error))
        return
    log.info("orphan sweep %s: %s", when, report.summary())
    if report.missing_objects:
        shown = ", ".join(report.missing_objects[:20])
        log.warning("records name %d objects the store lacks: %s", len(report.missing_objects), shown)


async def sweep_orphans_regularly(
    sessions: sessionmaker[Session], store: ObjectStore, grace_seconds: float, every: float
) -> None:
    """One sweep at start-up, then one every ``every`` seconds (0: only the first)."""
    await sweep_once(sessions, store, grace_seconds, "at start-up")
    while every:
        await asyncio.sleep(every)
        await sweep_once(sessions, store, grace_seconds, "(scheduled)")


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


def create_app(settings: Settings | None = None, *, tasks: tuple[str, ...] = SERVED_TASKS) -> FastAPI:
    """A ready-to-serve app; models are loaded when it starts (its lifespan), not here.

    Args:
        settings: configuration; default :func:`get_settings`.
        tasks: the tasks it serves.
    """
    settings = settings or get_settings()
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
        predictor = Predictor(settings, models, metrics)
        app.state.models, app.state.predictor = models, predictor
        changes = await models.refresh()
        for task, change in changes.items():
            log.info("%s: %s", task, change)
        sweeper = asyncio.create_task(
            sweep_orphans_regularly(
                app.state.sessions, app.state.store, settings.orphan_grace_seconds, settings.orphan_sweep_seconds
            )
        )
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
            await asyncio.wait({sweeper}, timeout=SWEEP_STOP_WAIT_SECONDS)
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await models.close()
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
    routers = (predict, ops, auth_router, records_router, feedback_router)
    for router in routers:
        app.include_router(router)

    def limit_for(path: str) -> int:
        return settings.max_batch_upload_bytes if path.endswith("/batch") else settings.max_upload_bytes

    paths = frozenset(getattr(route, "path", "") for router in routers for route in router.routes)
    app.add_middleware(RequestGuard, metrics=metrics, limit_for=limit_for, paths=paths)
    return app
