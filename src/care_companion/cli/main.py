"""The ``care-companion`` command line: a thin shell over the library's workflows."""

from __future__ import annotations

from typing import Annotated

import typer

from care_companion import __version__
from care_companion.cli import data, db, dicom, drift, feedback, fhir, registry, release, train, users
from care_companion.cli.common import setup_logging
from care_companion.cli.demo import demo_cmd
from care_companion.cli.evaluate import evaluate_cmd
from care_companion.cli.serve import serve_cmd

app = typer.Typer(
    name="care-companion",
    help="AI assistance for radiology: chest X-ray triage with calibrated, sensitivity-first models. "
    "Every output must be reviewed by a radiologist. Settings come from CARE_* environment variables or .env.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(data.app, name="data")
app.command("train")(train.train_cmd)
app.add_typer(registry.app, name="registry")
app.add_typer(users.app, name="users")
app.add_typer(feedback.app, name="feedback")
app.add_typer(db.app, name="db")
app.add_typer(drift.app, name="drift")
app.add_typer(dicom.app, name="dicom")
app.add_typer(fhir.app, name="fhir")
app.add_typer(release.app, name="release")
app.command("evaluate")(evaluate_cmd)
app.command("demo")(demo_cmd)
app.command("serve")(serve_cmd)
app.command("retrain")(feedback.retrain_cmd)


@app.command("tasks")
def tasks_cmd() -> None:
    """List the registered tasks: classes, disease classes, views, body part and how they are imported."""
    from rich.table import Table

    from care_companion.cli.common import console, friendly_errors
    from care_companion.tasks import all_tasks

    with friendly_errors():
        specs = all_tasks()
    table = Table(title="registered tasks")
    for column in ("task", "body part", "classes (disease in bold)", "views", "refusal code", "importers"):
        table.add_column(column)
    for spec in specs:
        classes = ", ".join(f"[bold]{c}[/]" if c in spec.positives else c for c in spec.classes)
        importers = ", ".join(spec.importers) or "data import folders"
        table.add_row(spec.name, spec.body_part, classes, ", ".join(spec.views), spec.refusal_code, importers)
    console.print(table)


def _version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Care Companion command line."""
    setup_logging(verbose)
