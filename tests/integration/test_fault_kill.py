"""SIGKILL during a burst of predictions and feedback: after a restart every request that got a 2xx is in the
database and the store, and, once the start-up sweep has run, no orphan objects and no missing ones remain.

The real ``care-companion serve`` process is killed (not a wrapper shell) after a number of successful
responses, while eight threads keep requests in flight; the requests still queued then fail to connect, which
the test asserts, so the kill provably fell in the middle of the burst. Runs on SQLite and, when it answers on
127.0.0.1:5432, on a fresh PostgreSQL database.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from care_companion.config import Settings
from care_companion.reconcile import find_orphans
from care_companion.records.db import make_engine, session_factory, upgrade
from care_companion.records.models import Feedback, Image, Prediction
from care_companion.storage import LocalStore
from care_companion.tasks import CHEST
from tests.conftest import write_bundle
from tests.helpers import seed_users, tokens_for
from tests.integration.test_serve_cli import CLI, _env, _png
from tests.processes import free_port

pytestmark = [pytest.mark.slow, pytest.mark.integration]

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
SECRET = "fault-kill-test-secret-" + "x" * 24
USERS = (("tech", "technician", "radiology"), ("rad", "radiologist", "radiology"))
STUDIES = 6
BURST = 240  # requests queued for the burst; the kill leaves most of them unsent (they fail fast)
KILL_AFTER = 20  # successful burst responses before SIGKILL
THREADS = 8
TIMEOUT = httpx.Timeout(60.0, connect=10.0)


# -- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A constant-output chest bundle (always pneumonia), shared by both backends."""
    return write_bundle(tmp_path_factory.mktemp("kill-bundle"), logits=[0.0, 2.0, 0.0, -2.0])


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database on 127.0.0.1:5432 (skips when none answers), dropped afterwards."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"care_kill_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL is not reachable at 127.0.0.1:5432 ({type(exc.orig).__name__})")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """Migrated settings with a technician and a radiologist of one department (SQLite file or fresh PG)."""
    data_dir = tmp_path / "care-data"
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{data_dir / 'care.db'}"
        else:
            url = stack.enter_context(postgres_database())
        upgrade(url)
        engine = make_engine(url)
        with session_factory(engine)() as session, session.begin():
            seed_users(session, USERS)
        engine.dispose()
        yield Settings(data_dir=data_dir, database_url=url, jwt_secret=SECRET)


# -- the server process --------------------------------------------------------------------------------------


class Server:
    """``care-companion serve`` as a child process (the Python process itself), its output in a file."""

    def __init__(self, settings: Settings, bundle: Path, log: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        environ = _env(settings.data_dir.parent) | {
            "CARE_DATABASE_URL": settings.db_url,
            "CARE_JWT_SECRET": SECRET,
            "COLUMNS": "300",  # rich's log lines, unwrapped
            **env,
        }
        command = [str(CLI), "serve", "--chest-model", str(bundle), "--port", str(self.port), "--log-level", "warning"]
        with log.open("w") as out:
            self.proc = subprocess.Popen(command, env=environ, stdout=out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        """Everything the process wrote so far."""
        return self.log.read_text(errors="replace")

    def wait_until(self, ready: Callable[[], bool], what: str, seconds: float = 90) -> None:
        """Poll ``ready`` until it holds; fail with the server's output if it dies or time runs out."""
        deadline = time.monotonic() + seconds
        while not ready():
            assert self.proc.poll() is None, f"the server exited while waiting for {what}:\n{self.output()}"
            assert time.monotonic() < deadline, f"no {what} within {seconds} s:\n{self.output()}"
            time.sleep(0.2)

    def wait_ready(self) -> None:
        """Until /ready answers 200."""

        def ready() -> bool:
            try:
                return httpx.get(f"{self.url}/ready", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        self.wait_until(ready, "readiness")

    def kill(self) -> None:
        """SIGKILL the server process and reap it."""
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(timeout=30) == -signal.SIGKILL

    def stop(self) -> None:
        """SIGTERM (graceful) if still running; SIGKILL when it does not stop in time."""
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- requests ------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One request's fate: its kind, what it sent (prediction images), its answer or its transport error."""

    kind: str
    sent: bytes = b""
    status: int | None = None
    body: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether it got a 2xx."""
        return self.status is not None and 200 <= self.status < 300


class Client:
    """The API as the technician and the radiologist."""

    def __init__(self, url: str, settings: Settings) -> None:
        tokens = tokens_for(settings, USERS)
        self.http = httpx.Client(base_url=url, timeout=TIMEOUT, limits=httpx.Limits(max_connections=THREADS))
        self.tech = {"Authorization": f"Bearer {tokens['tech']}"}
        self.rad = {"Authorization": f"Bearer {tokens['rad']}"}

    def created(self, path: str, body: dict[str, Any]) -> int:
        """POST a record as the technician; its id."""
        answer = self.http.post(path, json=body, headers=self.tech)
        assert answer.status_code == 201, answer.text
        return int(answer.json()["id"])

    def predict(self, study_id: int, image: bytes) -> Outcome:
        """A chest prediction stored with the study (the technician's bearer token, as predict requires)."""
        files = {"file": ("x.png", image, "image/png")}
        return self._send("prediction", image, "/v1/predict/chest", files=files, data={"study_id": str(study_id)})

    def feedback(self, study_id: int, label: str) -> Outcome:
        """The radiologist's verdict on the study."""
        return self._send("feedback", b"", f"/v1/studies/{study_id}/feedback", json={"true_label": label})

    def _send(self, kind: str, sent: bytes, path: str, **request: Any) -> Outcome:
        headers = self.tech if kind == "prediction" else self.rad
        try:
            answer = self.http.post(path, headers=headers, **request)
        except httpx.TransportError as exc:
            return Outcome(kind, sent, error=f"{type(exc).__name__}: {exc}")
        body = answer.json() if answer.headers.get("content-type", "").startswith("application/json") else {}
        return Outcome(kind, sent, status=answer.status_code, body=body)

    def close(self) -> None:
        """Close the connections."""
        self.http.close()


def burst_jobs(client: Client, studies: list[int], judged: list[int]) -> list[Callable[[], Outcome]]:
    """Predictions of distinct images (two in three) and verdicts on studies that have a prediction."""
    jobs: list[Callable[[], Outcome]] = []
    for i in range(BURST):
        if i % 3 == 2:
            study, label = judged[i % len(judged)], CHEST.classes[i % len(CHEST.classes)]
            jobs.append(lambda study=study, label=label: client.feedback(study, label))
        else:
            image = _png(10_000 + i)
            jobs.append(lambda study=studies[i % len(studies)], image=image: client.predict(study, image))
    return jobs


def burst_then_kill(server: Server, jobs: list[Callable[[], Outcome]]) -> list[Outcome]:
    """Run ``jobs`` on eight threads; SIGKILL the server once ``KILL_AFTER`` of them succeeded."""
    enough = threading.Event()
    lock = threading.Lock()
    successes = 0

    def run(job: Callable[[], Outcome]) -> Outcome:
        nonlocal successes
        outcome = job()
        if outcome.ok:
            with lock:
                successes += 1
                if successes >= KILL_AFTER:
                    enough.set()
        return outcome

    with ThreadPoolExecutor(THREADS) as pool:
        futures = [pool.submit(run, job) for job in jobs]
        deadline = time.monotonic() + 180
        while not enough.wait(timeout=0.5):
            all_done = all(future.done() for future in futures)
            assert not all_done, f"the burst ended with only {successes} successes:\n{server.output()}"
            assert time.monotonic() < deadline, f"only {successes} successes in 180 s:\n{server.output()}"
        server.kill()
        return [future.result(timeout=120) for future in futures]


# -- the checks ----------------------------------------------------------------------------------------------


def check_predictions(session: Session, store: LocalStore, outcomes: list[Outcome]) -> None:
    """Every 2xx prediction: its prediction and image rows, the image's object with the bytes sent."""
    for outcome in outcomes:
        body = outcome.body
        prediction = session.get(Prediction, body["prediction_id"])
        assert prediction is not None, f"prediction of a 2xx response lost: {body}"
        assert (prediction.study_id, prediction.image_id) == (body["study_id"], body["image_id"])
        image = session.get(Image, body["image_id"])
        assert image is not None, f"image row of a 2xx response lost: {body}"
        assert image.sha256 == hashlib.sha256(outcome.sent).hexdigest()
        assert store.get_bytes(image.object_key) == outcome.sent


def check_feedback(session: Session, store: LocalStore, outcomes: list[Outcome]) -> None:
    """Every 2xx verdict: its row, as answered, and its copy in the store."""
    for outcome in outcomes:
        body = outcome.body
        feedback = session.get(Feedback, body["id"])
        assert feedback is not None, f"feedback of a 2xx response lost: {body}"
        assert (feedback.study_id, feedback.true_label, feedback.object_key) == (
            body["study_id"],
            body["true_label"],
            body["object_key"],
        )
        assert body["object_key"] and store.exists(body["object_key"])


def check_api_lists(client: Client, predictions: list[Outcome], studies: list[int]) -> None:
    """The restarted service lists every 2xx prediction with its study."""
    listed: set[int] = set()
    for study in studies:
        answer = client.http.get(f"/v1/studies/{study}/predictions", params={"limit": 500}, headers=client.tech)
        assert answer.status_code == 200, answer.text
        listed |= {row["id"] for row in answer.json()["data"]}
    assert {outcome.body["prediction_id"] for outcome in predictions} <= listed


def plant_orphans(store: LocalStore) -> list[str]:
    """Objects no row references (as a crash between write and commit leaves them), so the sweep has work."""
    sha = "0" * 64
    keys = [f"images/chest/00/{sha}.png", f"feedback/chest/NORMAL/{sha}.png"]
    for key in keys:
        store.put_bytes(key, b"orphan")
    return keys


# -- the test ------------------------------------------------------------------------------------------------


def test_sigkill_mid_burst_loses_no_acknowledged_request_and_leaves_no_orphans(
    settings: Settings, bundle: Path, tmp_path: Path
) -> None:
    started = time.monotonic()
    store = LocalStore(settings.data_dir / "store")
    first = Server(settings, bundle, tmp_path / "first.log", CARE_ORPHAN_GRACE_SECONDS="3600")
    try:
        first.wait_ready()
        client = Client(first.url, settings)
        patient = client.created("/v1/patients", {"mrn": "KILL-1", "name": "Kill Test", "department": ""})
        studies = [client.created("/v1/studies", {"patient_id": patient, "task": "chest"}) for _ in range(STUDIES)]
        judged = studies[: STUDIES // 2]
        warmup = [client.predict(study, _png(study)) for study in judged]  # feedback needs a predicted study
        assert all(outcome.ok for outcome in warmup), [outcome.body for outcome in warmup]
        outcomes = warmup + burst_then_kill(first, burst_jobs(client, studies, judged))
        client.close()
    finally:
        first.stop()

    acknowledged = [outcome for outcome in outcomes if outcome.ok]
    failed = [outcome for outcome in outcomes if outcome.error is not None]
    assert len(acknowledged) >= KILL_AFTER
    assert failed, "no request failed: the kill did not fall inside the burst"
    assert len(acknowledged) < len(outcomes), "every request succeeded before the kill"
    refused = [o for o in outcomes if o.status is not None and not o.ok]
    assert not refused, [(o.status, o.body) for o in refused]  # concurrent writers wait for each other
    planted = plant_orphans(store)

    second = Server(settings, bundle, tmp_path / "second.log", CARE_ORPHAN_GRACE_SECONDS="0")
    try:
        second.wait_ready()
        second.wait_until(lambda: "orphan sweep at start-up" in second.output(), "start-up sweep")
        assert "orphan sweep at start-up failed" not in second.output(), second.output()
        client = Client(second.url, settings)
        check_api_lists(client, [o for o in acknowledged if o.kind == "prediction"], studies)
        client.close()
    finally:
        second.stop()

    engine = make_engine(settings.db_url)
    try:
        with session_factory(engine)() as session:
            check_predictions(session, store, [o for o in acknowledged if o.kind == "prediction"])
            check_feedback(session, store, [o for o in acknowledged if o.kind == "feedback"])
            report = find_orphans(session, store, older_than=timedelta(0))
    finally:
        engine.dispose()
    assert not any(store.exists(key) for key in planted), "the start-up sweep left the planted orphans"
    assert report.orphan_objects == [] and report.skipped_recent == 0, report
    assert report.missing_objects == [], report
    kinds = {kind: sum(o.kind == kind for o in acknowledged) for kind in ("prediction", "feedback")}
    in_flight = sum(not (o.error or "").startswith("ConnectError") for o in failed)
    print(
        f"\n{kinds} acknowledged, {len(refused)} refused (503), {len(failed)} failed by the kill "
        f"({in_flight} of them in flight), {time.monotonic() - started:.1f} s"
    )
