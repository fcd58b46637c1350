"""``care-companion train``: train, calibrate, evaluate, gate and register a task's model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from care_companion.cli.common import EXIT_GATE, TaskArg, console, err_console, friendly_errors, given, settings

if TYPE_CHECKING:
    from care_companion.workflows.training import TrainOutcome


def report_outcome(outcome: TrainOutcome) -> None:
    """Print a training outcome; exit non-zero when the gate refused it. The bundle path is printed last."""
    m = outcome.metrics
    console.print(
        f"test (disease classes together): AUC {m.get('auc_abnormal', float('nan')):.3f}, "
        f"sensitivity {m.get('sensitivity_abnormal', float('nan')):.3f}, "
        f"specificity {m.get('specificity_abnormal', float('nan')):.3f}"
    )
    console.print(f"training: {outcome.train_seconds:.0f} s, {outcome.images_per_second:.1f} images/s")
    if outcome.int8 is not None:
        nan = float("nan")
        fp32, int8 = outcome.int8.test.get("fp32", {}), outcome.int8.test.get("int8", {})
        verdict = "served by default" if outcome.int8.preferred else "kept as an option, not served by default"
        console.print(
            f"INT8 model: {verdict} ({outcome.int8.reason}); test sensitivity "
            f"{fp32.get('sensitivity_abnormal', nan):.3f} -> {int8.get('sensitivity_abnormal', nan):.3f}, "
            f"AUC {fp32.get('auc_abnormal', nan):.3f} -> {int8.get('auc_abnormal', nan):.3f}"
        )
    console.print(f"MLflow run {outcome.run_id} (data set {outcome.dataset_version})")
    if outcome.registered_version is not None:
        console.print(f"[green]registered[/] {outcome.task} version {outcome.registered_version} as @staging")
    elif outcome.gate.passed:
        console.print("gate passed; not registered (--no-register)")
    else:
        err_console.print("[bold red]gate refused:[/] " + "; ".join(outcome.gate.shortfalls))
        err_console.print("the run is tagged needs_retraining=true")
    console.print(f"report: {outcome.bundle_dir / 'evaluation.json'}")
    typer.echo(str(outcome.bundle_dir))  # plain, unwrapped: scripts read the last line
    if not outcome.gate.passed:
        raise typer.Exit(EXIT_GATE)


def train_cmd(
    task: TaskArg,
    backbone: Annotated[
        str | None,
        typer.Option(
            help="Any timm model name (default: the recipe's); for wrist, one shared backbone or one per view "
            "as 'resnet18,efficientnet_b0' (PA, lateral)."
        ),
    ] = None,
    image_size: Annotated[int | None, typer.Option(help="Square input side in pixels.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per optimisation step.")] = None,
    head_epochs: Annotated[
        int | None, typer.Option(help="Stage 1 epochs: head only, backbone frozen (skipped when from scratch).")
    ] = None,
    head_lr: Annotated[float | None, typer.Option(help="Stage 1 peak learning rate (AdamW).")] = None,
    finetune_epochs: Annotated[int | None, typer.Option(help="Stage 2 epochs: the whole network.")] = None,
    finetune_lr: Annotated[float | None, typer.Option(help="Stage 2 peak learning rate (AdamW).")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="AdamW weight decay.")] = None,
    patience: Annotated[
        int | None, typer.Option(help="Early stop after this many epochs without better validation sensitivity.")
    ] = None,
    samples_per_epoch: Annotated[int | None, typer.Option(help="Images drawn per epoch (default: all).")] = None,
    max_train_per_class: Annotated[int | None, typer.Option(help="Cap training images per class.")] = None,
    output_stride: Annotated[
        int | None,
        typer.Option(
            help="16 dilates a ResNet backbone's last stage (heat maps twice as fine), 8 its last two (default 32)."
        ),
    ] = None,
    max_steps_per_epoch: Annotated[int | None, typer.Option(help="Cap steps per epoch (smoke runs).")] = None,
    pretrained: Annotated[bool, typer.Option(help="Start from timm's published weights where reachable.")] = False,
    init_weights: Annotated[
        str | None,
        typer.Option(
            help="Start from a checkpoint: a .pt state dict, a bundle directory or a registry URI "
            "such as models:/chest@production."
        ),
    ] = None,
    precision: Annotated[
        str, typer.Option(help="Training arithmetic: auto (bfloat16 where the CPU supports it), fp32 or bf16.")
    ] = "auto",
    balance_sources: Annotated[bool, typer.Option(help="Within each class, draw every source equally often.")] = True,
    seed: Annotated[int | None, typer.Option(help="Seed (default: CARE_SEED).")] = None,
    dataset_version: Annotated[str | None, typer.Option(help="Data-set version (default: latest import).")] = None,
    register: Annotated[bool, typer.Option(help="Register the model when it passes the gate.")] = True,
    demo: Annotated[bool, typer.Option(help="Mark the bundle as a demo model, not for clinical use.")] = False,
    int8: Annotated[
        bool,
        typer.Option(
            help="Also make an INT8 model calibrated on validation images; served only if no sensitivity drops."
        ),
    ] = True,
    workers: Annotated[
        int,
        typer.Option(
            help="0: train in this process. N: data-parallel on N Ray Train workers, on a local Ray instance "
            "or on the cluster at --ray-address / RAY_ADDRESS.",
            min=0,
        ),
    ] = 0,
    ray_address: Annotated[str | None, typer.Option(help="A Ray cluster to train on (default: RAY_ADDRESS).")] = None,
    resume: Annotated[
        str | None,
        typer.Option(help="Continue an interrupted run from its last checkpoint (the run name it printed)."),
    ] = None,
) -> None:
    """Train a task's model (two stages, calibration, operating point, gate, registry) with its default
    recipe, or override any part of it."""
    from care_companion.tasks import get_task
    from care_companion.training.trainer import TrainConfig
    from care_companion.workflows.training import resolve_init_weights, train_task

    cfg = settings()
    overrides: dict[str, Any] = given(
        backbone=backbone,
        image_size=image_size,
        batch_size=batch_size,
        head_epochs=head_epochs,
        head_lr=head_lr,
        finetune_epochs=finetune_epochs,
        finetune_lr=finetune_lr,
        weight_decay=weight_decay,
        patience=patience,
        samples_per_epoch=samples_per_epoch,
        max_train_per_class=max_train_per_class,
        max_steps_per_epoch=max_steps_per_epoch,
        output_stride=output_stride,
    )
    with friendly_errors():
        if init_weights is not None:
            overrides["init_weights"] = resolve_init_weights(init_weights, cfg)
        options = {
            "pretrained": pretrained,
            "precision": precision,
            "balance_sources": balance_sources,
            "seed": cfg.seed if seed is None else seed,
        }
        spec = get_task(task)
        config = TrainConfig(**(spec.recipe.model_dump() | overrides | options))
        outcome = train_task(
            spec,
            config,
            settings=cfg,
            dataset_version=dataset_version,
            register=register,
            demo=demo,
            int8=int8,
            workers=workers,
            ray_address=ray_address,
            resume=resume,
        )
    report_outcome(outcome)
