"""``care-companion evaluate``: score a model on a labelled folder tree and write the evaluation JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from care_companion import REVIEW_WARNING
from care_companion.cli.common import console, friendly_errors, settings


def evaluate_cmd(
    model: Annotated[str, typer.Option(help="Bundle directory or registry URI, e.g. models:/chest@staging.")],
    data: Annotated[
        Path,
        typer.Option(
            help="Labelled class-folder tree (normal/pneumonia/tuberculosis/unknown; "
            "a two-class normal/pneumonia tree is valid)."
        ),
    ],
    json_out: Annotated[Path | None, typer.Option(help="Write the evaluation JSON here.")] = None,
    plots: Annotated[Path | None, typer.Option(help="Write ROC, confusion and reliability PNGs here.")] = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for the 95% intervals.")] = 1000,
    workers: Annotated[int, typer.Option(help="Decoding processes.")] = 2,
) -> None:
    """Evaluate a model at its stored operating point: sensitivity, specificity, AUC with 95% intervals."""
    from care_companion.workflows.evaluation import evaluate_model

    with friendly_errors():
        run = evaluate_model(
            model, data, settings=settings(), json_out=json_out, plots_dir=plots, n_boot=n_boot, workers=workers
        )
    r = run.report

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    console.print(f"{r.n} images ({len(run.skipped)} skipped) with {run.bundle_dir}")
    console.print(
        f"abnormal: AUC {fmt(r.auc_abnormal)}, sensitivity {fmt(r.sensitivity_abnormal)}, "
        f"specificity {fmt(r.specificity_abnormal)}"
    )
    for cls, m in r.per_class.items():
        console.print(
            f"  {cls}: sensitivity {fmt(m.sensitivity)}, specificity {fmt(m.specificity)}, AUC {fmt(m.auc)} (n={m.n})"
        )
    if run.json_path:
        console.print(f"evaluation JSON: {run.json_path}")
    console.print(f"[yellow]{REVIEW_WARNING}")
