"""Monitoring over HTTP: drift status and history, model health (``/v1/monitoring/...``), and the dashboard page."""

from __future__ import annotations

from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse, Response

from care_companion.errors import RequestError
from care_companion.serving.deps import ModelsDep, MonitorDep, Watcher
from care_companion.serving.manager import ModelManager
from care_companion.serving.monitor import DriftReport, HealthReport
from care_companion.serving.schemas import AUTH_ERRORS

monitoring_router = APIRouter(tags=["monitoring"])

DASHBOARD_ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
}


def _tasks(models: ModelManager, task: str | None) -> list[str]:
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
    return await monitor.drift(_tasks(models, task), refresh=refresh, hours=hours)


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
    return await monitor.health(_tasks(models, task))


def _asset(name: str) -> str:
    return resources.files("care_companion.serving").joinpath("static", name).read_text(encoding="utf-8")


@monitoring_router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
def dashboard() -> HTMLResponse:
    """The monitoring dashboard: a page that signs in and draws what the monitoring API returns (no CDN)."""
    return HTMLResponse(_asset("dashboard.html"))


@monitoring_router.get("/dashboard/assets/{name}", include_in_schema=False)
def dashboard_asset(name: str) -> Response:
    """The dashboard's scripts and styles, served by the app itself."""
    if name not in DASHBOARD_ASSETS:
        raise RequestError(f"no dashboard asset {name!r}", code="not_found", status=404)
    return Response(_asset(name), media_type=DASHBOARD_ASSETS[name], headers={"Cache-Control": "no-cache"})
