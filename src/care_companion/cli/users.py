"""``care-companion users``: create and list the people (and machines) who may use the service."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from care_companion.cli.common import console, friendly_errors, settings

if TYPE_CHECKING:
    from care_companion.workflows.accounts import Credentials

app = typer.Typer(help="Users: technicians, radiologists and admins; API keys for machines.", no_args_is_help=True)


@app.command("create")
def create_cmd(
    username: Annotated[str, typer.Option(help="Login name.")],
    role: Annotated[str, typer.Option(help="technician, radiologist or admin.")] = "admin",
    full_name: Annotated[str | None, typer.Option(help="Name shown in the records (default: the login name).")] = None,
    department: Annotated[str, typer.Option(help="Department whose studies the user sees.")] = "radiology",
    specialty: Annotated[list[str] | None, typer.Option(help="A specialty (repeatable).")] = None,
    password: Annotated[
        str | None,
        typer.Option(
            help="Password (default: a random one, printed once); or set CARE_NEW_USER_PASSWORD.",
            envvar="CARE_NEW_USER_PASSWORD",
        ),
    ] = None,
    api_key: Annotated[bool, typer.Option(help="Also make an API key for machine access (printed once).")] = False,
) -> None:
    """Create a user (the first admin bootstraps the service); the database must be migrated (db upgrade)."""
    from care_companion.workflows.accounts import open_account

    with friendly_errors():
        account = open_account(
            settings(),
            username=username,
            role=role,
            department=department,
            full_name=full_name,
            specialties=specialty,
            password=password,
            api_key=api_key,
        )
    console.print(f"created {account.role} [bold]{account.username}[/] (department {account.department})")
    show_secrets(account)


def show_secrets(account: Credentials) -> None:
    """Print a generated password and an API key, each once."""
    if account.generated:
        console.print(f"password: {account.password}   (shown once; store it now)", soft_wrap=True)
    if account.api_key is not None:
        console.print(
            f"API key:  {account.api_key}   (shown once; send it as 'Authorization: Bearer <key>')", soft_wrap=True
        )


@app.command("list")
def list_cmd() -> None:
    """List users with their role and department."""
    from care_companion.records.db import check_migrated, make_engine, session_factory
    from care_companion.records.repos import list_users

    with friendly_errors():
        engine = make_engine(settings().db_url)
        try:
            check_migrated(engine)
            with session_factory(engine)() as session:
                users, count = list_users(session=session, limit=500)
                rows = [(u.username, u.role, u.department, u.full_name, u.is_active) for u in users]
        finally:
            engine.dispose()
    for name, role, department, full, active in rows:
        console.print(f"{name:20} {role:12} {department:16} {full}{'' if active else '  (inactive)'}")
    console.print(f"{count} user(s)")
