"""Monitoring over HTTP: drift status and history, model health (``/v1/monitoring/...``); the dashboard page that
draws them is in :mod:`care_companion.serving.pages`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from care_companion.errors import RequestError
from care_companion.serving.deps import ModelsDep, MonitorDep, Watcher
from care_companion.serving.manager import ModelManager
from care_companion.serving.monitor import DriftReport, HealthReport
from care_companion.serving.schemas import AUTH_ERRORS

monitoring_router = APIRouter(tags=["monitoring"])


def served_tasks(models: ModelManager, task: str | None) -> list[str]:
    """The tasks a query asks about: ``task`` (422 ``unknown_task`` when not served), else every served one."""
    served = list(models.tasks)
    if task is None:
        return served
    if task not in served:
        raise RequestError(f"unknown task {task!r}; this service monitors {', '.join(served)}", code="unknown_task")
    return [task]


@monitoring_router.get(
    "/v1/monitoring/drift", response_model=DriftReport, responses=AUTH_ERRORS, summary="Data drift per task"
)
async def drift(
    user: Watcher,
    monitor: MonitorDep,
    models: ModelsDep,
    task: Annotated[str | None, Query(description="One task (default: every served task).")] = None,
    refresh: Annotated[bool, Query(description="Check the window now instead of returning the latest check.")] = False,
    hours: Annotated[float, Query(gt=0, le=24 * 90, description="History to return, in hours.")] = 24.0,
) -> DriftReport:
    """The latest drift check of each task's rolling window against its model's reference profile (per-test
    p-values, the verdict, feature medians, class mix, confidence and rejections) and the checks of the last
    ``hours``."""
    return await monitor.drift(served_tasks(models, task), refresh=refresh, hours=hours)


@monitoring_router.get(
    "/v1/monitoring/health", response_model=HealthReport, responses=AUTH_ERRORS, summary="Model health per task"
)
async def health(
    user: Watcher,
    monitor: MonitorDep,
    models: ModelsDep,
    task: Annotated[str | None, Query(description="One task (default: every served task).")] = None,
) -> HealthReport:
    """Per task: the served model and the registry's aliases, throughput and latency over the last five minutes,
    predictions and refused inputs since start-up, and online sensitivity/specificity/accuracy over the last
    confirmed studies (``CARE_ONLINE_WINDOW``)."""
    return await monitor.health(served_tasks(models, task))
