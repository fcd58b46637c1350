"""``care-companion db``: migrate the records database and show where it stands."""

from __future__ import annotations

from typing import Annotated

import typer

from care_companion.cli.common import console, friendly_errors, settings

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
