"""``care-companion release``: move a model through staging, canary and production on evidence."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

from care_companion.cli.common import TaskOpt, console, friendly_errors, settings

app = typer.Typer(help="Release: staging -> canary -> production on evidence, and rollback.", no_args_is_help=True)


def _sessions() -> tuple[Engine, sessionmaker[Session]]:
    """The records database's engine (migrated, or a clear error) and its sessions."""
    from care_companion.records.db import check_migrated, make_engine, session_factory

    engine = make_engine(settings().db_url)
    check_migrated(engine)
    return engine, session_factory(engine)


@app.command("promote")
def promote_cmd(
    version: Annotated[int, typer.Option(help="Model version to move.")],
    to: Annotated[str, typer.Option("--to", help="staging, canary or production (in that order).")],
    task: TaskOpt = "chest",
) -> None:
    """Move a version one step: to staging (it passed the gate when registered), to canary only from staging,
    to production only from canary and only when enough radiologist-confirmed canary studies show a sensitivity
    not significantly below production's (CARE_RELEASE_MIN_CANARY_STUDIES, CARE_RELEASE_ALPHA). Audited."""
    from care_companion.release.promotion import promote

    with friendly_errors():
        engine, sessions = _sessions()
        try:
            decision = promote(task, version, to, settings(), sessions)
        finally:
            engine.dispose()
    console.print(f"{task}@{to} -> version {version}")
    for name, figures in decision.evidence.items():
        console.print(f"  {name}: {figures}")


@app.command("rollback")
def rollback_cmd(task: TaskOpt = "chest") -> None:
    """Move production back to the version it pointed at before its last promotion (one step; audited). The
    service follows within CARE_MODEL_POLL_SECONDS, or at once on POST /v1/admin/reload."""
    from care_companion.release.promotion import rollback

    with friendly_errors():
        engine, sessions = _sessions()
        try:
            decision = rollback(task, settings(), sessions)
        finally:
            engine.dispose()
    console.print(f"{task}@production -> version {decision.version} (was {decision.evidence.get('from')})")
