"""``care-companion db``: migrate the records database, show where it stands, sweep orphan objects."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from care_companion.cli.common import console, friendly_errors, settings

if TYPE_CHECKING:
    from care_companion.reconcile import OrphanReport

app = typer.Typer(help="The records database: migrations (Alembic) and their state.", no_args_is_help=True)


@app.command("upgrade")
def upgrade_cmd(
    revision: Annotated[
        str, typer.Option(help="Revision to migrate to (default: the newest the code knows).")
    ] = "head",
) -> None:
    """Create or migrate the records database (CARE_DATABASE_URL, default SQLite in the data dir)."""
    from care_companion.records.db import current_revision, make_engine, safe_url, upgrade

    url = settings().db_url
    with friendly_errors():
        upgrade(url, revision)
        engine = make_engine(url)
        try:
            reached = current_revision(engine)
        finally:
            engine.dispose()
    console.print(f"records database at {safe_url(url)} is at revision {reached or 'base'}")


@app.command("current")
def current_cmd() -> None:
    """Show the database's revision and the code's; exit 2 when the database needs `db upgrade`."""
    from care_companion.records.db import check_migrated, current_revision, head_revision, make_engine

    url = settings().db_url
    with friendly_errors():
        engine = make_engine(url)
        try:
            console.print(f"current: {current_revision(engine) or 'empty'}  head: {head_revision()}")
            check_migrated(engine)
        finally:
            engine.dispose()


@app.command("sweep")
def sweep_cmd(
    older_than: Annotated[
        float | None,
        typer.Option(
            min=0, help="Only orphans older than this many seconds are deleted (default: CARE_ORPHAN_GRACE_SECONDS)."
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report orphans without deleting them.")] = False,
) -> None:
    """Delete store objects no record references (left by a crash between a write and its commit); report
    records whose object is missing (exit 1 when there are any)."""
    from datetime import timedelta

    from sqlalchemy.exc import DBAPIError

    from care_companion.reconcile import sweep_orphans
    from care_companion.records.db import check_migrated, database_unavailable, make_engine, session_factory
    from care_companion.storage import store_from_settings

    cfg = settings()
    grace = timedelta(seconds=cfg.orphan_grace_seconds if older_than is None else older_than)
    with friendly_errors():
        engine = make_engine(cfg.db_url)
        try:
            check_migrated(engine)
            store = store_from_settings(cfg)
            report = sweep_orphans(session_factory(engine), store, older_than=grace, delete=not dry_run)
        except DBAPIError as exc:
            raise database_unavailable(exc, url=cfg.db_url) from exc
        finally:
            engine.dispose()
    _print_report(report, dry_run=dry_run)
    if report.missing_objects:
        raise typer.Exit(1)


def _print_report(report: OrphanReport, *, dry_run: bool) -> None:
    """The sweep's keys, one per line with what happened to each, then the counts."""
    deleted = set(report.deleted)
    for key in report.orphan_objects:
        fate = "deleted" if key in deleted else ("would delete" if dry_run else "not deleted")
        console.print(f"orphan   {key}  ({fate})", highlight=False, soft_wrap=True)
    for key in report.missing_objects:
        console.print(f"[red]missing[/]  {key}", highlight=False, soft_wrap=True)
    console.print(report.summary())
