"""A private, throw-away PostgreSQL cluster for fault tests that stop and restart the database.

The shared server on 127.0.0.1:5432 must never be stopped (other tests use it), so a test that takes the
database away gets its own cluster: ``initdb`` into a temporary folder (trust authentication), a free port on
127.0.0.1, the unix socket inside the folder. PostgreSQL refuses to run as root, so under root the binaries
run as the ``postgres`` OS user, which owns the folder. Skips when the binaries, that user or ``initdb`` are
missing or fail.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.processes import free_port

PG_ROOT = Path("/usr/lib/postgresql")
OS_USER = "postgres"
DATABASE = "care"
START_TRIES = 3  # a fresh port each time: another process may grab the free port before the server binds it
COMMAND_SECONDS = 60


def find_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding ``initdb`` and ``pg_ctl``; None if there is none."""
    candidates = [p / "bin" for p in PG_ROOT.glob("*") if (p / "bin" / "initdb").exists()]
    candidates = [b for b in candidates if (b / "pg_ctl").exists()]
    if not candidates:
        return None
    return max(candidates, key=lambda b: [int(x) if x.isdigit() else 0 for x in b.parent.name.split(".")])


def _as_server_user(argv: list[str]) -> list[str]:
    """``argv`` run as the ``postgres`` OS user when we are root (PostgreSQL refuses root), else as is."""
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", OS_USER, "--", *argv]


@dataclass
class PrivatePostgres:
    """One private cluster: its binaries, folder and port; :meth:`stop` and :meth:`start` keep both."""

    bindir: Path
    root: Path
    port: int
    database: str = DATABASE

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory."""
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        """The server log (``pg_ctl -l``)."""
        return self.root / "server.log"

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the test database (psycopg 3, as the project's ``database_url``)."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = _as_server_user([str(self.bindir / args[0]), *args[1:]])
        return subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_SECONDS, check=check)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server log, for failure messages."""
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def initdb(self) -> subprocess.CompletedProcess[str]:
        """Create the cluster (trust authentication, superuser ``postgres``, no fsync) without raising."""
        return self._run(
            "initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", check=False
        )

    def configure(self) -> None:
        """Listen on 127.0.0.1:``port`` only, socket in the temporary folder, no fsync.

        ``synchronous_commit`` stays on: with it off, an immediate stop would lose the last commits.
        """
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "fsync": "off",  # safe against a server crash (the kernel has the WAL), not an OS crash
        }
        with (self.data_dir / "postgresql.auto.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def start(self) -> None:
        """Start the server on the same port and data directory and wait until it accepts connections."""
        result = self._run("pg_ctl", "start", "-w", "-D", str(self.data_dir), "-l", str(self.log_file), check=False)
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed ({result.stderr.strip()}):\n{self.log_tail()}")

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server (``immediate``: like a crash, no clean shutdown) and wait until it is gone."""
        self._run("pg_ctl", "stop", "-w", "-m", mode, "-D", str(self.data_dir))

    def is_running(self) -> bool:
        """Whether ``pg_ctl status`` finds a running server."""
        return self._run("pg_ctl", "status", "-D", str(self.data_dir), check=False).returncode == 0

    def create_database(self) -> None:
        """Create the test database."""
        engine = create_engine(
            f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres", isolation_level="AUTOCOMMIT"
        )
        try:
            with engine.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{self.database}"'))
        finally:
            engine.dispose()


def _temporary_root() -> Path:
    """A fresh folder under the system temp dir, owned by the server's OS user when we are root.

    Not pytest's ``tmp_path``: under root that sits in a 0700 folder the ``postgres`` user cannot enter.
    """
    root = Path(tempfile.mkdtemp(prefix="care-pg-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam(OS_USER)
        os.chown(root, user.pw_uid, user.pw_gid)
    return root


@contextmanager
def private_postgres_cluster() -> Iterator[PrivatePostgres]:
    """A running private cluster with an empty ``care`` database; stopped and deleted afterwards."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip(f"no PostgreSQL server binaries (initdb, pg_ctl) under {PG_ROOT}/*/bin")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(OS_USER)
        except KeyError:
            pytest.skip(f"running as root and there is no {OS_USER!r} OS user to run PostgreSQL as")
    root = _temporary_root()
    cluster = PrivatePostgres(bindir=bindir, root=root, port=free_port())
    try:
        made = cluster.initdb()
        if made.returncode != 0:
            pytest.skip(f"initdb failed ({made.returncode}): {(made.stderr or made.stdout).strip()[-500:]}")
        for attempt in range(START_TRIES):
            cluster.configure()  # later lines win, so a retry just appends the new port
            try:
                cluster.start()
                break
            except RuntimeError:
                if attempt == START_TRIES - 1:
                    raise
                cluster.port = free_port()
        cluster.create_database()
        yield cluster
    finally:
        try:
            if cluster.data_dir.exists() and cluster.is_running():
                cluster.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A private PostgreSQL cluster the test may stop and start (see :func:`private_postgres_cluster`)."""
    with private_postgres_cluster() as cluster:
        yield cluster
