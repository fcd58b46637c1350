"""The retraining loop: feedback → a new data-set version → train → the same gate and registry.

``retrain(if_needed=True)`` is the policy a scheduler runs (cron, a Kubernetes CronJob): it retrains only
when at least ``settings.retrain_min_feedback`` labelled images are not yet in the latest data set. (Once
drift monitoring exists, a drift alarm will be the policy's second trigger.)
"""

from __future__ import annotations

from pydantic import BaseModel

from care_companion.config import Settings
from care_companion.feedback.dataset import FeedbackDataset, build_dataset, new_feedback_count
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
                min_side=settings.min_image_side,
                max_pixels=settings.max_image_pixels,
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


def retrain(
    task: TaskSpec, config: TrainConfig, settings: Settings, *, if_needed: bool = False, min_new: int | None = None
) -> RetrainOutcome:
    """Build the feedback data set and train on it through the gate; with ``if_needed``, only past the policy.

    Args:
        task: the task.
        config: the training recipe.
        settings: data dir, database, store, gate.
        if_needed: apply the retrain policy (enough new labels) instead of retraining unconditionally.
        min_new: the policy's threshold (default ``settings.retrain_min_feedback``).
    """
    threshold = settings.retrain_min_feedback if min_new is None else min_new
    new = count_new_labels(task, settings)
    if if_needed and new < threshold:
        return RetrainOutcome(needed=False, new_labels=new, threshold=threshold)
    dataset = build_feedback_dataset(task, settings)
    outcome = train_task(task, config, settings=settings, dataset_version=dataset.version)
    return RetrainOutcome(needed=True, new_labels=new, threshold=threshold, dataset=dataset, training=outcome)
