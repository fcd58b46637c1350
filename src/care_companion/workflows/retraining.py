"""The retraining loop: feedback → a new data-set version → train → the same gate and registry.

``retrain(if_needed=True)`` is the policy a scheduler runs (cron, a Kubernetes CronJob, or an alert hook on
the drift alarm): it retrains when at least ``settings.retrain_min_feedback`` labelled images are not yet in the
latest data set, or, when the service raised a drift alarm for the task in the last
``settings.retrain_drift_hours``, from ``settings.retrain_min_feedback_on_drift`` new labels. A drift alarm
alone does not retrain: the model can only learn the new kind of image from radiologists' labels of it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import BaseModel

from care_companion.config import Settings
from care_companion.feedback.dataset import FeedbackDataset, build_dataset, new_feedback_count
from care_companion.imaging.decode import DecodeLimits
from care_companion.records import repos
from care_companion.records.db import check_migrated, make_engine, session_factory
from care_companion.storage import store_from_settings
from care_companion.tasks import TaskSpec
from care_companion.training.trainer import TrainConfig
from care_companion.workflows.training import TrainOutcome, train_task


class RetrainOutcome(BaseModel):
    """What a retraining run decided and did."""

    needed: bool
    new_labels: int
    threshold: int
    drift_alarm_at: str | None = None
    reason: str = ""
    dataset: FeedbackDataset | None = None
    training: TrainOutcome | None = None


def build_feedback_dataset(task: TaskSpec, settings: Settings, *, base_version: str | None = None) -> FeedbackDataset:
    """The latest data set plus every labelled feedback image, saved as a new version."""
    engine = make_engine(settings.db_url)
    try:
        check_migrated(engine)
        with session_factory(engine)() as session:
            return build_dataset(
                session=session,
                store=store_from_settings(settings),
                task=task,
                seed=settings.seed,
                base_version=base_version,
                limits=DecodeLimits.from_settings(settings),
            )
    finally:
        engine.dispose()


def count_new_labels(task: TaskSpec, settings: Settings) -> int:
    """Labelled feedback images not yet in the task's latest data set."""
    engine = make_engine(settings.db_url)
    try:
        check_migrated(engine)
        with session_factory(engine)() as session:
            return new_feedback_count(session=session, store=store_from_settings(settings), task=task.name)
    finally:
        engine.dispose()


def latest_drift_alarm(task: TaskSpec, settings: Settings) -> datetime | None:
    """When the service last found drift in the task's inputs within ``retrain_drift_hours``, if it did."""
    since = datetime.now(UTC) - timedelta(hours=settings.retrain_drift_hours)
    engine = make_engine(settings.db_url)
    try:
        check_migrated(engine)
        with session_factory(engine)() as session:
            return repos.latest_drift_alarm(session=session, task=task.name, since=since)
    finally:
        engine.dispose()


def retrain(
    task: TaskSpec, config: TrainConfig, settings: Settings, *, if_needed: bool = False, min_new: int | None = None
) -> RetrainOutcome:
    """Build the feedback data set and train on it through the gate; with ``if_needed``, only past the policy.

    Args:
        task: the task.
        config: the training recipe.
        settings: data dir, database, store, gate.
        if_needed: apply the retrain policy (enough new labels, fewer after a drift alarm) instead of retraining
            unconditionally.
        min_new: the policy's threshold without drift (default ``settings.retrain_min_feedback``).
    """
    threshold = settings.retrain_min_feedback if min_new is None else min_new
    new = count_new_labels(task, settings)
    alarm = latest_drift_alarm(task, settings)
    if alarm is not None:
        threshold = min(threshold, settings.retrain_min_feedback_on_drift)
    at = alarm.isoformat(timespec="seconds") if alarm is not None else None
    drift = f"drift alarm at {at}" if at else f"no drift alarm in the last {settings.retrain_drift_hours:g} h"
    reason = f"{new} new labels (policy: at least {threshold}; {drift})"
    if if_needed and new < threshold:
        return RetrainOutcome(needed=False, new_labels=new, threshold=threshold, drift_alarm_at=at, reason=reason)
    dataset = build_feedback_dataset(task, settings)
    outcome = train_task(task, config, settings=settings, dataset_version=dataset.version)
    return RetrainOutcome(
        needed=True,
        new_labels=new,
        threshold=threshold,
        drift_alarm_at=at,
        reason=reason,
        dataset=dataset,
        training=outcome,
    )
