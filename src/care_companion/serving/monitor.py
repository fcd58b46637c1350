"""The service's monitoring: drift checks of each task's window, traffic, and online performance from feedback.

Every served input goes into its model's drift window (:class:`~care_companion.monitoring.drift.DriftWindow`);
every ``drift_check_every`` inputs the window is checked in a worker thread, the result goes to the Prometheus
gauges, to memory and to the ``drift_checks`` table (the history the dashboard draws and
``retrain --if-needed`` reads). Online sensitivity and specificity come from radiologists' verdicts in the
records database, refreshed every ``monitor_refresh_seconds`` and on request.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session, sessionmaker

from care_companion.config import Settings
from care_companion.monitoring.drift import DriftStatus, Observation
from care_companion.monitoring.metrics import ServiceMetrics
from care_companion.monitoring.performance import OnlinePerformance, online_performance
from care_companion.records.models import DriftCheck
from care_companion.records.repos import add_drift_check, list_drift_checks, recent_outcomes
from care_companion.registry.models import ALIASES, alias_version
from care_companion.serving.engine import Prepared, ServedModel
from care_companion.serving.manager import ModelManager
from care_companion.tasks import get_task

log = logging.getLogger(__name__)

TRAFFIC_SECONDS = 300.0  # the traffic figures (throughput, latency percentiles) cover the last five minutes
ALIAS_CACHE_SECONDS = 30.0


class DriftPoint(BaseModel):
    """One past drift check, for plots over time."""

    at: str
    model_version: str | None
    drifted: bool | None
    window_images: int
    p_values: dict[str, float | None]


class TaskDrift(BaseModel):
    """A task's latest drift check and its history."""

    status: DriftStatus | None = Field(description="The latest check (null: no model is loaded).")
    reason: str | None = None
    history: list[DriftPoint] = Field(default_factory=list)


class DriftReport(BaseModel):
    """``GET /v1/monitoring/drift``."""

    tasks: dict[str, TaskDrift]


class Traffic(BaseModel):
    """Successful predictions over the last ``window_seconds``."""

    window_seconds: float
    predictions: int
    per_minute: float
    latency_ms_p50: float | None
    latency_ms_p95: float | None


class ServedInfo(BaseModel):
    """The model a task serves now."""

    loaded: bool
    reason: str | None = None
    reference: str | None = None
    version: str | None = None
    alias: str | None = None
    loaded_at: str | None = None
    precision: str | None = None
    backbone: str | None = None
    dataset_version: str | None = None
    demo: bool | None = None
    aliases: dict[str, int | None] = Field(default_factory=dict, description="Registry aliases of the task's model.")


class TaskHealth(BaseModel):
    """Everything the dashboard shows for one task besides drift."""

    model: ServedInfo
    traffic: Traffic
    predictions: dict[str, float] = Field(description="Predictions since start-up by decided class.")
    rejected: dict[str, float] = Field(description="Refused inputs since start-up by reason.")
    online: OnlinePerformance | None = None
    online_error: str | None = None
    drifted: bool | None = None
    drift_checked_at: str | None = None


class HealthReport(BaseModel):
    """``GET /v1/monitoring/health``."""

    at: str
    tasks: dict[str, TaskHealth]


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


class Monitor:
    """Drift checks, traffic and online performance of the served tasks (one per app)."""

    def __init__(
        self, settings: Settings, metrics: ServiceMetrics, models: ModelManager, sessions: sessionmaker[Session]
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.models = models
        self.sessions = sessions
        self.latest: dict[str, DriftStatus] = {}
        self._running: dict[str, asyncio.Task[DriftStatus]] = {}
        self._latency: dict[str, deque[tuple[float, float]]] = {t: deque(maxlen=100_000) for t in models.tasks}
        self._aliases: dict[str, tuple[float, dict[str, int | None]]] = {}
        self._refresher: asyncio.Task[None] | None = None

    # -- inputs ------------------------------------------------------------------------------------------------

    def observe(
        self,
        model: ServedModel,
        prepared: Prepared,
        probabilities: np.ndarray,
        embedding: np.ndarray | None,
        *,
        label: str,
        rejected: bool,
        latency_s: float | None = None,
    ) -> None:
        """Record one answered input; starts a drift check in the background when one is due."""
        task = model.task_name
        observation = Observation(
            features=prepared.features,
            histograms=prepared.histograms,
            embedding=embedding,
            probabilities=probabilities,
            decided=model.meta.classes.index(label),
            rejected=rejected,
        )
        since = model.drift.observe(observation)
        if latency_s is not None and not rejected:
            self._latency[task].append((time.monotonic(), latency_s))
        due = since >= self.settings.drift_check_every and len(model.drift) >= self.settings.drift_min_images
        if due and task not in self._running:
            self._running[task] = asyncio.get_running_loop().create_task(self.check(model))

    # -- drift -------------------------------------------------------------------------------------------------

    async def check(self, model: ServedModel) -> DriftStatus:
        """Check a model's drift window now (in a worker thread), publish and store the result."""
        task = model.task_name
        try:
            status = await asyncio.to_thread(model.drift.check)
            self.latest[task] = status
            self.metrics.set_drift(task, status.drifted, status.p_values, status.window_images)
            if status.available:
                await asyncio.to_thread(self._store, status)
            return status
        finally:
            self._running.pop(task, None)

    def _store(self, status: DriftStatus) -> None:
        """Write a drift check to the records database; a database outage only costs the history."""
        try:
            with self.sessions.begin() as session:
                add_drift_check(
                    session=session,
                    check=DriftCheck(
                        task=status.task,
                        at=datetime.fromisoformat(status.checked_at),
                        model_version=status.model_version,
                        window_inputs=status.window_inputs,
                        window_images=status.window_images,
                        drifted=status.drifted,
                        p_values=dict(status.p_values),
                        detail=status.model_dump(mode="json"),
                    ),
                )
        except Exception as exc:  # never fail a request or the monitor for the history
            log.warning("could not store the %s drift check: %s", status.task, exc)

    def _history(self, task: str, hours: float) -> list[DriftPoint]:
        since = datetime.now(UTC) - timedelta(hours=hours)
        with self.sessions() as session:
            rows = list_drift_checks(session=session, task=task, since=since)
        return [
            DriftPoint(
                at=row.at.isoformat(timespec="milliseconds"),
                model_version=row.model_version,
                drifted=row.drifted,
                window_images=row.window_images,
                p_values=dict(row.p_values),
            )
            for row in rows
        ]

    async def drift(self, tasks: list[str], *, refresh: bool = False, hours: float = 24.0) -> DriftReport:
        """The latest drift check of each task (run now when asked or when there is none yet) and its history."""
        out: dict[str, TaskDrift] = {}
        for task in tasks:
            model = self.models.get(task)
            if model is None:
                out[task] = TaskDrift(status=None, reason=self.models.unavailable.get(task, "no model is loaded"))
                continue
            status = self.latest.get(task)
            if refresh or status is None or status.model_version != model.source.version:
                running = self._running.get(task)
                status = await (running if running is not None else self.check(model))
            try:
                history = await asyncio.to_thread(self._history, task, hours)
            except Exception as exc:  # the database being down must not hide the live status
                log.warning("drift history of %s unavailable: %s", task, exc)
                history = []
            out[task] = TaskDrift(status=status, history=history)
        return DriftReport(tasks=out)

    # -- health ------------------------------------------------------------------------------------------------

    def traffic(self, task: str) -> Traffic:
        """Throughput and latency percentiles of the task's successful predictions over the last five minutes."""
        now = time.monotonic()
        entries = list(self._latency.get(task, ()))
        start = bisect.bisect_left([at for at, _ in entries], now - TRAFFIC_SECONDS)
        recent = [seconds * 1000 for _, seconds in entries[start:]]
        return Traffic(
            window_seconds=TRAFFIC_SECONDS,
            predictions=len(recent),
            per_minute=round(len(recent) * 60 / TRAFFIC_SECONDS, 2),
            latency_ms_p50=_percentile(recent, 50),
            latency_ms_p95=_percentile(recent, 95),
        )

    def _registry_aliases(self, task: str) -> dict[str, int | None]:
        cached = self._aliases.get(task)
        if cached is not None and time.monotonic() - cached[0] < ALIAS_CACHE_SECONDS:
            return cached[1]
        try:
            found = {alias: alias_version(task, alias, self.settings) for alias in ALIASES}
        except Exception as exc:  # a registry outage shows as no aliases, not as an error page
            log.warning("registry aliases of %s unavailable: %s", task, exc)
            found = {}
        self._aliases[task] = (time.monotonic(), found)
        return found

    def _served(self, task: str) -> ServedInfo:
        model = self.models.get(task)
        aliases = self._registry_aliases(task)
        if model is None:
            return ServedInfo(loaded=False, reason=self.models.unavailable.get(task), aliases=aliases)
        return ServedInfo(
            loaded=True,
            reference=model.source.reference,
            version=model.source.version,
            alias=model.source.alias,
            loaded_at=model.loaded_at,
            precision=model.predictor.precision,
            backbone=model.meta.backbone,
            dataset_version=model.meta.dataset_version,
            demo=model.meta.demo,
            aliases=aliases,
        )

    def online(self, task: str) -> OnlinePerformance:
        """Online performance over the task's last confirmed studies (blocking: a database query)."""
        window = self.settings.online_window
        with self.sessions() as session:
            outcomes = recent_outcomes(session=session, task=task, limit=window)
        figures = online_performance(outcomes, get_task(task), window=window)
        self.metrics.set_online(task, figures.model_dump(), figures.studies)
        return figures

    def _health(self, task: str) -> TaskHealth:
        merged: dict[str, float] = {}  # by label, over both decisions
        for (of, label, _), value in self.metrics.totals("care_predictions").items():
            if of == task:
                merged[label] = merged.get(label, 0.0) + value
        rejected = {
            labels[1]: value
            for labels, value in self.metrics.totals("care_rejected_inputs").items()
            if labels[0] == task
        }
        online, error = None, None
        try:
            online = self.online(task)
        except Exception as exc:  # show the rest of the health page when the database is down
            error = f"online performance unavailable: {exc}"
        latest = self.latest.get(task)
        return TaskHealth(
            model=self._served(task),
            traffic=self.traffic(task),
            predictions=merged,
            rejected=rejected,
            online=online,
            online_error=error,
            drifted=latest.drifted if latest else None,
            drift_checked_at=latest.checked_at if latest else None,
        )

    async def health(self, tasks: list[str]) -> HealthReport:
        """Model, traffic, outcomes and online performance of each task."""
        found = {task: await asyncio.to_thread(self._health, task) for task in tasks}
        return HealthReport(at=datetime.now(UTC).isoformat(timespec="seconds"), tasks=found)

    # -- background ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Refresh the online-performance gauges every ``monitor_refresh_seconds`` (0: only on request)."""
        if self.settings.monitor_refresh_seconds:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        while True:
            for task in self.models.tasks:
                try:
                    await asyncio.to_thread(self.online, task)
                    await asyncio.to_thread(self._registry_aliases, task)  # the health page then answers at once
                except Exception as exc:  # never let the refresher die
                    log.warning("online performance of %s not refreshed: %s", task, exc)
            await asyncio.sleep(self.settings.monitor_refresh_seconds)

    async def stop(self) -> None:
        """Stop the refresher and wait for running drift checks."""
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
        running: list[Any] = list(self._running.values())
        if running:
            await asyncio.gather(*running, return_exceptions=True)
