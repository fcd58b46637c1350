"""``care-companion registry``: list model versions and move aliases (staging, canary, production)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from care_companion.cli.common import TaskOpt, console, friendly_errors, settings

app = typer.Typer(help="The model registry: versions, aliases and their key metrics.", no_args_is_help=True)


@app.command("list")
def list_cmd(task: TaskOpt = "chest") -> None:
    """Show every registered version of a task's model with its aliases and test metrics."""
    from care_companion.registry.models import list_versions

    with friendly_errors():
        versions = list_versions(task, settings())
    table = Table(title=f"registered model {task!r}")
    for col in ("version", "aliases", "AUC", "sens.", "spec.", "created", "run"):
        table.add_column(col)
    for v in versions:
        m = v.metrics
        table.add_row(
            str(v.version),
            ", ".join(v.aliases) or "-",
            *[
                f"{m[k]:.3f}" if k in m else "-"
                for k in ("auc_abnormal", "sensitivity_abnormal", "specificity_abnormal")
            ],
            v.created.strftime("%Y-%m-%d %H:%M"),
            (v.run_id or "")[:8],
        )
    console.print(table)


@app.command("promote")
def promote_cmd(
    version: Annotated[int, typer.Option(help="Model version to move the alias to.")],
    to: Annotated[str, typer.Option("--to", help="Alias: staging, canary or production.")],
    task: TaskOpt = "chest",
) -> None:
    """Point an alias (staging → canary → production) at a version."""
    from care_companion.registry.models import set_alias

    with friendly_errors():
        set_alias(task, version, to, settings())
    console.print(f"{task}@{to} -> version {version}")
