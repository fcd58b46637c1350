"""Engines, sessions and migrations of the records database (SQLite by default, PostgreSQL in production)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from care_companion.errors import ConfigError, ServiceUnavailable

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "alembic_version"
SQLITE_BUSY_SECONDS = 15.0
PG_CONNECT_SECONDS = 5  # libpq connect_timeout: an unreachable server is a quick 503


def safe_url(url: str) -> str:
    """The URL with its password masked, fit for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL: show nothing that may hold a secret
        return re.sub(r"//[^@/]*@", "//***@", url)


def make_engine(url: str) -> Engine:
    """An engine for ``url``.

    SQLite: the parent folder is created, connections may cross threads, foreign keys are enforced, the
    journal is WAL, and transactions are begun explicitly (``BEGIN IMMEDIATE``: writers wait up to
    ``SQLITE_BUSY_SECONDS`` for each other), so savepoints and transactional DDL work.
    PostgreSQL (and others): connections are checked before use (``pool_pre_ping``); a PostgreSQL server that
    does not answer fails a connection after ``PG_CONNECT_SECONDS`` (a 503), not after the OS's TCP timeout.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        connect_args = {"connect_timeout": PG_CONNECT_SECONDS} if parsed.get_backend_name() == "postgresql" else {}
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    database = parsed.database or ""
    on_disk = database not in ("", ":memory:") and not database.startswith("file:")
    if on_disk:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_SECONDS})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from pysqlite (it would begin lazily and break SAVEPOINT); see
        # SQLAlchemy's "SQLite transactions" notes. Pragmas run outside any transaction.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        if on_disk:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # IMMEDIATE takes the write lock at the start, so concurrent writers queue on the busy timeout instead
        # of failing with "database is locked" when a deferred transaction's read turns into a write.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions bound to ``engine`` whose objects stay readable after commit."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def alembic_config(url: str | None = None, *, connection: Connection | None = None) -> Any:
    """An Alembic configuration built in code: the package's migrations, and a URL and/or an open connection."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _run(url: str, action: str, revision: str) -> None:
    from alembic import command

    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            config = alembic_config(url, connection=connection)
            getattr(command, action)(config, revision)
    except DBAPIError as exc:
        raise database_unavailable(exc, url=url) from exc
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` up to ``revision`` (default: the newest the code knows)."""
    _run(url, "upgrade", revision)


def downgrade(url: str, revision: str) -> None:
    """Migrate the database at ``url`` down to ``revision`` (``base``: no tables left)."""
    _run(url, "downgrade", revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at; None for a database never migrated."""
    from alembic.runtime.migration import MigrationContext

    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table(VERSION_TABLE):
                return None
            return MigrationContext.configure(connection).get_current_revision()
    except DBAPIError as exc:
        raise database_unavailable(exc, url=engine.url.render_as_string(hide_password=True)) from exc


def head_revision() -> str:
    """The newest revision of the package's migrations."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships its migrations
        raise ConfigError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


def _known(revision: str) -> bool:
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except CommandError:
        return False


def check_migrated(engine: Engine) -> None:
    """Raise :class:`ConfigError` unless the database is at the head revision (the service refuses to start)."""
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    where = engine.url.render_as_string(hide_password=True)
    if current is not None and not _known(current):
        raise ConfigError(
            f"the records database at {where} is at revision {current}, which this code does not know "
            f"(its newest is {head}): run a release that includes it, or restore the database"
        )
    raise ConfigError(
        f"the records database at {where} is not migrated (at {current or 'empty'}, code needs {head}): "
        "run `care-companion db upgrade`"
    )


def _reason(exc: BaseException) -> str:
    original = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(original).splitlines() if line.strip()]
    text = lines[0] if lines else type(original).__name__
    text = re.sub(r"(password\s*=\s*)\S+", r"\1***", text, flags=re.IGNORECASE)
    return re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)


def database_unavailable(exc: BaseException, *, url: str | None = None) -> ServiceUnavailable:
    """A :class:`ServiceUnavailable` (code ``database_unavailable``) for a failed database call, without secrets."""
    where = f" at {safe_url(url)}" if url else ""
    return ServiceUnavailable(
        f"the records database{where} is unavailable: {_reason(exc)}", code="database_unavailable"
    )
