"""``care-companion feedback`` and ``retrain``: radiologists' labels back into the data, and the retraining loop."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from care_companion.cli.common import TaskOpt, console, friendly_errors, given, settings
from care_companion.cli.train import report_outcome

app = typer.Typer(
    help="Radiologists' feedback: build retraining data sets from confirmed labels.", no_args_is_help=True
)


@app.command("build-dataset")
def build_dataset_cmd(
    task: TaskOpt = "chest",
    base: Annotated[str | None, typer.Option(help="Data-set version to extend (default: the latest).")] = None,
) -> None:
    """Add every labelled feedback image to the task's data set (deduplicated, patient-grouped splits)."""
    from care_companion.tasks import get_task
    from care_companion.workflows.retraining import build_feedback_dataset

    with friendly_errors():
        built = build_feedback_dataset(get_task(task), settings(), base_version=base)
    console.print(
        f"data set {built.version} (from {built.base_version}): {built.added} feedback images added "
        f"{built.counts or ''}, {built.duplicates} duplicates, {len(built.skipped)} skipped; "
        f"splits {built.splits or '-'}"
    )


def retrain_cmd(
    task: TaskOpt = "chest",
    if_needed: Annotated[
        bool,
        typer.Option(
            "--if-needed",
            help="Retrain only when enough new labels arrived, fewer after a recent drift alarm (for a schedule).",
        ),
    ] = False,
    min_new: Annotated[
        int | None, typer.Option(help="New labels that make it needed (default: CARE_RETRAIN_MIN_FEEDBACK).")
    ] = None,
    backbone: Annotated[str | None, typer.Option(help="Backbone (default: the recipe's).")] = None,
    image_size: Annotated[int | None, typer.Option(help="Input side in pixels.")] = None,
    finetune_epochs: Annotated[int | None, typer.Option(help="Fine-tuning epochs.")] = None,
    samples_per_epoch: Annotated[int | None, typer.Option(help="Images drawn per epoch.")] = None,
) -> None:
    """Feedback → new data-set version → train → gate → registry (@staging when it passes)."""
    from care_companion.tasks import get_task
    from care_companion.training.trainer import TrainConfig
    from care_companion.workflows.retraining import retrain

    cfg = settings()
    overrides: dict[str, Any] = given(
        backbone=backbone, image_size=image_size, finetune_epochs=finetune_epochs, samples_per_epoch=samples_per_epoch
    )
    with friendly_errors():
        spec = get_task(task)
        config = TrainConfig(**(spec.recipe.model_dump() | overrides | {"seed": cfg.seed}))
        result = retrain(spec, config, cfg, if_needed=if_needed, min_new=min_new)
    if not result.needed:
        console.print(f"retraining not needed: {result.reason}")
        return
    assert result.dataset is not None and result.training is not None
    console.print(f"retraining: {result.reason}")
    console.print(f"{result.new_labels} new labels; data set {result.dataset.version} (+{result.dataset.added} images)")
    report_outcome(result.training)
