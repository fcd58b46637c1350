"""What every command group shares: settings, console output, turning errors into one-line messages."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.logging import RichHandler

from care_companion.config import Settings, get_settings
from care_companion.errors import CareError, GateRefused

console = Console()
err_console = Console(stderr=True, soft_wrap=True)

EXIT_ERROR = 2
EXIT_GATE = 3
EXIT_DRIFT = 3  # `drift report`: the check ran and found drift (like a refused gate: ran, and said no)


def setup_logging(verbose: bool = False) -> None:
    """Rich log lines for the CLI (called from the app callback, never on import)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, rich_tracebacks=False)],
        force=True,
    )
    for noisy in ("mlflow", "alembic", "urllib3", "botocore", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def known_task(name: str | None) -> str | None:
    """Typer callback: the name of a registered task, or a usage error listing the known ones."""
    from care_companion.tasks import get_task, task_names

    if name is None:
        return None
    try:
        return get_task(name).name
    except CareError:
        raise typer.BadParameter(f"unknown task {name!r}; known tasks: {', '.join(task_names())}") from None


def complete_task(incomplete: str) -> list[str]:
    """Shell completion of task names."""
    from care_companion.tasks import task_names

    return [name for name in task_names() if name.startswith(incomplete)]


TASK_HELP = "A registered task (`care-companion tasks` lists them)."
TaskArg = Annotated[str, typer.Argument(help=TASK_HELP, callback=known_task, autocompletion=complete_task)]
TaskOpt = Annotated[str, typer.Option(help=TASK_HELP, callback=known_task, autocompletion=complete_task)]


def given(**options: Any) -> dict[str, Any]:
    """The options the user set (not None): overrides of a recipe or of the settings."""
    return {name: value for name, value in options.items() if value is not None}


def settings() -> Settings:
    """The settings of this invocation."""
    return get_settings()


@contextmanager
def friendly_errors() -> Iterator[None]:
    """Turn expected errors into a one-line message and a non-zero exit code."""
    try:
        yield
    except GateRefused as exc:
        err_console.print(f"[bold red]gate refused:[/] {exc.detail}")
        raise typer.Exit(EXIT_GATE) from None
    except CareError as exc:
        err_console.print(f"[bold red]error ({exc.code}):[/] {exc.detail}")
        raise typer.Exit(EXIT_ERROR) from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        err_console.print(f"[bold red]error (invalid_option):[/] {problems}")
        raise typer.Exit(EXIT_ERROR) from None
