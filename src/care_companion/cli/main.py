"""The ``care-companion`` command line: a thin shell over the library's workflows."""

from __future__ import annotations

from typing import Annotated

import typer

from care_companion import __version__
from care_companion.cli import data, db, drift, feedback, registry, train, users
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
app.command("evaluate")(evaluate_cmd)
app.command("demo")(demo_cmd)
app.command("serve")(serve_cmd)
app.command("retrain")(feedback.retrain_cmd)


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
