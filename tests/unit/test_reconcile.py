"""The orphan sweep on SQLite and a local store: orphans deleted once old enough, referenced objects (images and
the feedback copies) kept, missing objects reported only; the ``db sweep`` command and the start-up sweep."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from care_companion import reconcile
from care_companion.cli.main import app as cli_app
from care_companion.config import Settings
from care_companion.feedback.ledger import feedback_key, record_feedback
from care_companion.reconcile import OrphanReport, find_orphans, sweep_orphans
from care_companion.records.db import make_engine, session_factory
from care_companion.records.models import User
from care_companion.records.repos import add_image, create_patient, create_study
from care_companion.records.schemas import FeedbackCreate, PatientCreate, StudyCreate
from care_companion.serving import app as service_app
from care_companion.serving.app import OrphanSweeper, sweep_once
from care_companion.serving.persistence import image_key
from care_companion.storage import LocalStore, ObjectStore
from tests.helpers import migrated, seed_users, service_client

LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)
GRACE = timedelta(minutes=5)
runner = CliRunner()


@dataclass
class World:
    """A migrated SQLite database and a local store, with one radiologist and one chest study."""

    settings: Settings
    sessions: sessionmaker[Session]
    store: LocalStore
    study_id: int
    radiologist_id: int

    def age(self, *keys: str, at: datetime = LONG_AGO) -> None:
        """Set the objects' modification time to ``at`` (default: long ago)."""
        for key in keys:
            os.utime(self.store.root / key, (at.timestamp(), at.timestamp()))

    def image(self, data: bytes, *, view: str = "frontal", stored: bool = True) -> str:
        """Record an image of the study (and store it, aged, unless ``stored`` is False); returns its key."""
        sha, key = image_key("chest", data, "png")
        if stored:
            self.store.put_bytes(key, data)
            self.age(key)
        with self.sessions() as session, session.begin():
            add_image(
                session=session, study_id=self.study_id, object_key=key, sha256=sha, view=view,
                content_type="png", size_bytes=len(data),
            )  # fmt: skip
        return key

    def feedback(self, label: str) -> str | None:
        """Record a verdict on the study (copying its images); returns the feedback's object key."""
        with self.sessions() as session, session.begin():
            feedback = record_feedback(
                session=session,
                store=self.store,
                study_id=self.study_id,
                radiologist=session.get_one(User, self.radiologist_id),
                feedback_in=FeedbackCreate(true_label=label),
                deid_salt="salt",
            )
            return feedback.object_key

    def orphan(self, data: bytes, *, at: datetime = LONG_AGO) -> str:
        """Store an image no row references, last modified at ``at``; returns its key."""
        key = image_key("chest", data, "png")[1]
        self.store.put_bytes(key, data)
        self.age(key, at=at)
        return key

    def sweep(self, **options: object) -> OrphanReport:
        """:func:`sweep_orphans` with the test's grace period unless given."""
        return sweep_orphans(self.sessions, self.store, **({"older_than": GRACE} | options))  # type: ignore[arg-type]


@contextmanager
def make_world(data_dir: Path) -> Iterator[World]:
    """A :class:`World` in ``data_dir`` (SQLite, default store)."""
    settings = migrated(Settings(data_dir=data_dir))
    engine = make_engine(settings.db_url)
    sessions = session_factory(engine)
    with sessions() as session, session.begin():
        seed_users(session, (("rad", "radiologist", "er"),))
        patient = create_patient(session=session, patient_in=PatientCreate(mrn="M1", name="Jane Doe", department="er"))
        study = create_study(session=session, study_in=StudyCreate(patient_id=patient.id, task="chest"))
        radiologist = session.query(User).one()
        ids = (study.id, radiologist.id)
    try:
        yield World(settings, sessions, LocalStore(settings.data_dir / "store"), *ids)
    finally:
        engine.dispose()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with make_world(tmp_path / "care-data") as made:
        yield made


def test_an_old_orphan_is_deleted_and_referenced_objects_are_kept(world: World) -> None:
    kept = world.image(b"referenced")
    orphan = world.orphan(b"orphan")
    world.store.put_bytes("models/chest/model.onnx", b"not swept")
    report = world.sweep()
    assert report.orphan_objects == [orphan] and report.deleted == [orphan]
    assert report.missing_objects == [] and report.skipped_recent == 0
    assert world.store.list() == sorted([kept, "models/chest/model.onnx"])


def test_a_recent_orphan_is_left_for_a_later_sweep(world: World) -> None:
    recent = world.orphan(b"in flight", at=datetime.now(UTC))
    report = world.sweep()
    assert report == OrphanReport(skipped_recent=1)
    assert world.store.exists(recent)
    assert world.sweep(older_than=timedelta(0)).deleted == [recent]


def test_the_grace_period_is_measured_from_now(world: World) -> None:
    key = world.orphan(b"x", at=LONG_AGO)
    with world.sessions() as session:
        early = find_orphans(session, world.store, older_than=GRACE, now=LONG_AGO + timedelta(minutes=1))
        late = find_orphans(session, world.store, older_than=GRACE, now=LONG_AGO + timedelta(minutes=6))
    assert (early.orphan_objects, early.skipped_recent) == ([], 1)
    assert (late.orphan_objects, late.skipped_recent) == ([key], 0)
    assert world.store.exists(key)  # finding deletes nothing


def test_feedback_copies_are_referenced_and_a_stray_copy_is_an_orphan(world: World) -> None:
    first = world.image(b"frontal")
    second = world.image(b"lateral", view="lateral")
    copy = world.feedback("pneumonia")
    copies = world.store.list("feedback/")
    assert copy in copies and len(copies) == 2  # one per image; the row keeps the first key only
    sha = hashlib.sha256(b"frontal").hexdigest()
    stray = feedback_key("chest", "normal", sha, first)  # a verdict whose transaction never committed
    world.store.put_bytes(stray, b"frontal")
    world.age(*copies, stray)
    report = world.sweep()
    assert report.deleted == [stray]
    assert world.store.list() == sorted([first, second, *copies])


def test_missing_objects_are_reported_never_recreated(world: World) -> None:
    present = world.image(b"present")
    copy = world.feedback("normal")
    assert copy is not None
    lost = world.image(b"lost", stored=False)
    world.store.delete(copy)
    report = world.sweep(older_than=timedelta(0))
    assert report.missing_objects == sorted([lost, copy])
    assert report.orphan_objects == [] and not world.store.exists(lost)
    assert world.store.exists(present)


def test_dry_run_deletes_nothing(world: World) -> None:
    orphan = world.orphan(b"orphan")
    report = world.sweep(delete=False)
    assert report.orphan_objects == [orphan] and report.deleted == []
    assert world.store.exists(orphan)


def test_an_orphan_adopted_before_the_delete_is_kept(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    key = world.orphan(b"adopted")
    found = find_orphans

    def then_adopt(session: Session, store: ObjectStore, **options: object) -> OrphanReport:
        report = found(session, store, **options)  # type: ignore[arg-type]
        world.image(b"adopted")  # a request with the same content commits its row meanwhile
        return report

    monkeypatch.setattr(reconcile, "find_orphans", then_adopt)
    report = world.sweep()
    assert report.orphan_objects == [key] and report.deleted == []
    assert world.store.exists(key)


# -- the command ---------------------------------------------------------------------------------------------


@pytest.fixture
def cli_world(cli_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """The world in the CLI's data dir (CARE_DATA_DIR), SQLite and the default store."""
    monkeypatch.delenv("CARE_DATABASE_URL", raising=False)
    monkeypatch.delenv("CARE_ORPHAN_GRACE_SECONDS", raising=False)
    with make_world(cli_env) as made:
        yield made


def test_db_sweep_dry_run_then_sweep(cli_world: World) -> None:
    orphan = cli_world.orphan(b"orphan")
    recent = cli_world.orphan(b"recent", at=datetime.now(UTC))
    dry = runner.invoke(cli_app, ["db", "sweep", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert f"{orphan}  (would delete)" in dry.output and recent not in dry.output
    assert "1 orphan objects (0 deleted, 1 too recent to touch), 0 missing objects" in dry.output
    assert cli_world.store.exists(orphan)

    swept = runner.invoke(cli_app, ["db", "sweep", "--older-than", "0"])
    assert swept.exit_code == 0, swept.output
    assert "2 orphan objects (2 deleted, 0 too recent to touch)" in swept.output
    assert cli_world.store.list() == []


def test_db_sweep_exits_1_on_missing_objects(cli_world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    lost = cli_world.image(b"lost", stored=False)
    monkeypatch.setenv("CARE_ORPHAN_GRACE_SECONDS", "0")
    result = runner.invoke(cli_app, ["db", "sweep"])
    assert result.exit_code == 1, result.output
    assert f"missing  {lost}" in result.output and "1 missing objects" in result.output


def test_db_sweep_refuses_an_unmigrated_database(cli_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CARE_DATABASE_URL", raising=False)
    result = runner.invoke(cli_app, ["db", "sweep"])
    assert result.exit_code == 2, result.output
    assert "not migrated" in result.output and "db upgrade" in result.output


# -- the start-up sweep --------------------------------------------------------------------------------------


def test_the_service_sweeps_old_orphans_at_startup(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "care-data" / "store")
    orphan = image_key("chest", b"orphan", "png")[1]
    store.put_bytes(orphan, b"orphan")
    with service_client(tmp_path, login=False, orphan_grace_seconds=0) as client:
        deadline = time.monotonic() + 30
        while store.exists(orphan):
            assert time.monotonic() < deadline, "the start-up sweep did not delete the orphan within 30 s"
            time.sleep(0.05)
        assert client.get("/ready").status_code == 200


def test_a_failing_startup_sweep_is_only_a_warning(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    engine = make_engine("postgresql+psycopg://care:s3cret-pw@127.0.0.1:1/care")
    try:
        with caplog.at_level(logging.WARNING):
            sweep_once(session_factory(engine), LocalStore(tmp_path), 0, "at start-up")
    finally:
        engine.dispose()
    assert "orphan sweep at start-up failed" in caplog.text and "database_unavailable" not in caplog.text
    assert "unavailable" in caplog.text and "s3cret-pw" not in caplog.text


def test_stopping_the_sweeper_between_sweeps_does_not_wait(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'none.db'}")  # unmigrated: each sweep fails fast, a warning

    async def run() -> float:
        sweeper = OrphanSweeper(session_factory(engine), LocalStore(tmp_path), 0, every=3600)
        sweeper.start()
        await asyncio.sleep(0.5)  # the start-up sweep is over; it now sleeps for an hour
        began = time.monotonic()
        await sweeper.stop(wait=60)
        return time.monotonic() - began

    try:
        assert asyncio.run(run()) < 30, "stop() waited for the sleeping sweeper instead of cancelling it"
    finally:
        engine.dispose()


def test_stopping_the_sweeper_lets_a_running_sweep_finish(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def slow_sweep(*args: object, **kwargs: object) -> OrphanReport:
        started.set()
        release.wait(30)
        finished.set()
        return OrphanReport()

    monkeypatch.setattr(service_app, "sweep_orphans", slow_sweep)

    async def run() -> None:
        sweeper = OrphanSweeper(None, LocalStore(tmp_path), 0, every=3600)  # type: ignore[arg-type]
        sweeper.start()
        while not started.is_set():
            await asyncio.sleep(0.01)
        threading.Timer(0.3, release.set).start()
        await sweeper.stop(wait=60)

    asyncio.run(run())
    assert finished.is_set(), "stop() returned while a sweep was still deleting objects"
