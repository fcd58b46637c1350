"""``care-companion evaluate``: score a model on a labelled folder tree and write the evaluation JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from care_companion import REVIEW_WARNING
from care_companion.cli.common import complete_task, console, friendly_errors, known_task, settings


def evaluate_cmd(
    model: Annotated[str, typer.Option(help="Bundle directory or registry URI, e.g. models:/chest@staging.")],
    data: Annotated[
        Path,
        typer.Option(
            help="Labelled data. A one-view task (chest): a class-folder tree (e.g. normal/pneumonia/tuberculosis/"
            "unknown; a tree with some of the classes is valid). Wrist: a GRAZPEDWRI-DX or FracAtlas folder "
            "(dataset.csv + images), scored study by study."
        ),
    ],
    json_out: Annotated[Path | None, typer.Option(help="Write the evaluation JSON here.")] = None,
    plots: Annotated[Path | None, typer.Option(help="Write ROC, confusion and reliability PNGs here.")] = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for the 95% intervals.")] = 1000,
    workers: Annotated[int, typer.Option(help="Decoding processes.")] = 2,
    task: Annotated[
        str | None,
        typer.Option(
            help="The task the model must be for (a registered task); default: the model's.",
            callback=known_task,
            autocompletion=complete_task,
        ),
    ] = None,
) -> None:
    """Evaluate a model at its stored operating point: sensitivity, specificity, AUC with 95% intervals."""
    from care_companion.workflows.evaluation import evaluate_model

    with friendly_errors():
        run = evaluate_model(
            model,
            data,
            settings=settings(),
            json_out=json_out,
            plots_dir=plots,
            n_boot=n_boot,
            workers=workers,
            task=task,
        )
    r = run.report

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    console.print(
        f"{r.n} {'studies' if run.multiview else 'images'} ({len(run.skipped)} images skipped) with {run.bundle_dir}"
    )
    console.print(
        f"{' or '.join(r.positives)}: AUC {fmt(r.auc)}, sensitivity {fmt(r.sensitivity)}, "
        f"specificity {fmt(r.specificity)} at the operating point"
    )
    for cls, m in r.per_class.items():
        console.print(
            f"  {cls}: sensitivity {fmt(m.sensitivity)}, specificity {fmt(m.specificity)}, AUC {fmt(m.auc)} (n={m.n})"
        )
    if run.ood_gate is not None:
        g = run.ood_gate
        console.print(
            f"out-of-distribution gate: refuses {g['refused']} of {g['n']} ({g['share']:.1%}); the service answers "
            "those 'not a radiograph of this task' (422) instead of a finding (figures above score every film)"
        )
    if run.json_path:
        console.print(f"evaluation JSON: {run.json_path}")
    console.print(f"[yellow]{REVIEW_WARNING}")
