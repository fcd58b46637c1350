"""``care-companion drift``: an HTML drift report for a folder of images, and a bundle's reference profile."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from care_companion.cli.common import EXIT_DRIFT, console, err_console, friendly_errors, settings

app = typer.Typer(
    help="Data drift: compare images with the reference profile of the model that will read them.",
    no_args_is_help=True,
)


@app.command("report")
def report_cmd(
    reference: Annotated[
        str, typer.Option(help="The model: bundle folder or registry URI (models:/chest@production, models:/chest/3).")
    ],
    current: Annotated[Path, typer.Option(help="Folder of images to check (PNG, JPEG, DICOM, ... at any depth).")],
    task: Annotated[
        str | None, typer.Option(help="The task the model must be for (chest or wrist); default: the model's.")
    ] = None,
    out: Annotated[Path, typer.Option(help="The HTML report to write.")] = Path("drift-report.html"),
    view: Annotated[
        str | None, typer.Option(help="Wrist: the view every image is taken as, pa or lateral (default pa).")
    ] = None,
    min_images: Annotated[int, typer.Option(min=2, help="Images needed before a test family runs.")] = 10,
    precision: Annotated[
        str | None, typer.Option(help="Model file to run: auto, fp32 or int8 (default: the service's setting).")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Decoding processes.")] = 2,
) -> None:
    """Test a folder of images against a model's reference profile and write a self-contained HTML report.

    Exit code 0: no drift; 3: drift found; 2: an error (bad folder, model without a profile, ...).
    """
    from care_companion.monitoring.report_html import format_p
    from care_companion.workflows.drift_report import drift_report

    with friendly_errors():
        found = drift_report(
            reference,
            current,
            task,
            settings(),
            out,
            view=view,
            precision=precision,
            min_images=min_images,
            workers=workers,
        )
    table = Table(title=f"{found.task} drift: {found.window_inputs} images from {current}")
    for column in ("family", "raw p", "Holm-adjusted p", "result"):
        table.add_column(column)
    for family, raw in found.raw_p_values.items():
        result = "not run" if raw is None else ("[red]drift" if family in found.flagged else "no drift")
        table.add_row(family, format_p(raw), format_p(found.p_values.get(family)), result)
    console.print(table)
    if found.skipped:
        err_console.print(f"[yellow]{len(found.skipped)} of {found.files} files skipped[/] (listed in the report):")
        for item in found.skipped[:10]:
            err_console.print(f"  {item.detail}", highlight=False)
        if len(found.skipped) > 10:
            err_console.print(f"  ... and {len(found.skipped) - 10} more")
    console.print(f"report: {found.report}")
    console.print("[yellow]Drift is a warning about the data, not about any patient.")
    if found.drifted is None:
        err_console.print(f"[yellow]not tested:[/] too few images (each family needs {found.min_images})")
    elif found.drifted:
        err_console.print(f"[bold red]drift found:[/] {', '.join(found.flagged)} (alpha {found.alpha:g})")
        raise typer.Exit(EXIT_DRIFT)
    else:
        console.print(f"[green]no drift found[/] (alpha {found.alpha:g})")


@app.command("profile")
def profile_cmd(
    reference: Annotated[
        str, typer.Argument(help="The model: bundle folder or registry URI (models:/chest@production).")
    ],
    max_images: Annotated[int, typer.Option(min=2, help="Training images sampled for the features and PCA.")] = 1000,
) -> None:
    """(Re)compute a model bundle's reference profile from the data-set version it was trained on."""
    from care_companion.registry.refs import ModelRef
    from care_companion.workflows.drift_report import rebuild_profile

    with friendly_errors():
        bundle_dir, profile = rebuild_profile(reference, settings(), max_images=max_images)
    counts = ", ".join(f"{name} {value}" for name, value in sorted(profile.counts.items()))
    console.print(f"reference profile written to {bundle_dir} ({counts})")
    if ModelRef.parse(reference).in_mlflow:
        console.print(
            "[yellow]the profile is in this machine's copy of the registry bundle; services on this machine that "
            "load the same model use it"
        )
