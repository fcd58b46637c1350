"""The canary report over HTTP (``GET /v1/releases/{task}``): what ``care-companion release status`` prints and the
dashboard's release panel draws."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from care_companion.release.report import ReleaseReport, release_report
from care_companion.serving.deps import ModelsDep, SessionsDep, SettingsDep, Watcher
from care_companion.serving.monitoring_routes import served_tasks
from care_companion.serving.schemas import AUTH_ERRORS

release_router = APIRouter(tags=["release"])


@release_router.get(
    "/v1/releases/{task}", response_model=ReleaseReport, responses=AUTH_ERRORS, summary="The canary report of a task"
)
async def release_status(
    task: str, user: Watcher, settings: SettingsDep, sessions: SessionsDep, models: ModelsDep
) -> ReleaseReport:
    """Production and the canary over the canary window: sensitivity and specificity from radiologists' verdicts
    (counts, 95% Wilson intervals), agreement on shadowed films, error rate, p95 latency and drift checks of each
    version, and the decision rule's verdict (promote, rollback, wait; ``release promote --auto`` applies it)."""
    (name,) = served_tasks(models, task)
    return await asyncio.to_thread(release_report, name, settings, sessions)
