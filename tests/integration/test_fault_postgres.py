"""PostgreSQL stops mid-run: requests that need it get a quick 503 ``database_unavailable`` with a clear
message and no secret, nothing is half-stored, liveness and metrics keep answering, and once the database is
back the same running service (no restart) serves and stores again by itself.

Runs the app in-process (FastAPI's TestClient, lifespan included) against a private cluster
(:mod:`tests.pg_private`), never the shared server on 5432.
"""

from __future__ import annotations

import io
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import service_client
from tests.pg_private import PrivatePostgres, private_postgres  # noqa: F401 - the fixture

if TYPE_CHECKING:  # starlette's TestClient answers with httpx2 responses
    from httpx2 import Response

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

PASSWORD = "fault-pg-s3cret-pw"  # trust auth ignores it; it must never appear in an answer
FAST_SECONDS = 5.0  # an outage is answered at once, not after a connect hang
RECOVERY_SECONDS = 30.0
OUTAGE_MRN = "MRN-OUTAGE"


def _png(seed: int) -> bytes:
    """A small random grey PNG (distinct per seed, so each upload is a distinct object)."""
    pixels = (np.random.default_rng(seed).random((96, 96)) * 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _predict(client: TestClient, study_id: int, seed: int) -> Response:
    """A chest prediction for ``study_id`` (the client already sends the technician's bearer token)."""
    assert client.headers.get("Authorization", "").startswith("Bearer ")
    return client.post(
        "/v1/predict/chest", files={"file": ("film.png", _png(seed), "image/png")}, data={"study_id": str(study_id)}
    )


def _timed(call: Callable[[], Response]) -> tuple[Response, float]:
    """The response of ``call`` and how many seconds it took."""
    started = time.perf_counter()
    response = call()
    return response, time.perf_counter() - started


def _assert_unavailable(response: Response, seconds: float, what: str) -> None:
    """A quick 503 ``database_unavailable`` naming the records database, without the password."""
    assert response.status_code == 503, f"{what}: {response.status_code} {response.text}"
    body = response.json()
    assert body["error"] == "database_unavailable", f"{what}: {body}"
    assert "records database" in body["detail"] and "unavailable" in body["detail"], f"{what}: {body}"
    assert PASSWORD not in response.text, f"{what} leaks the database password"
    assert response.headers.get("retry-after"), f"{what}: a 503 should say when to retry"
    assert seconds < FAST_SECONDS, f"{what} took {seconds:.1f}s to fail"


def _eventually_ok(call: Callable[[], Response], seconds: float) -> Response:
    """Repeat ``call`` until it answers 200, failing (with the last answer) after ``seconds``."""
    deadline = time.monotonic() + seconds
    while (response := call()).status_code != 200:
        assert time.monotonic() < deadline, (
            f"the service did not recover within {seconds:.0f}s of the database's return: "
            f"{response.status_code} {response.text}"
        )
        time.sleep(0.25)
    return response


def _created(response: Response) -> int:
    """The id of a record a 201 answer created."""
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def _study_images(client: TestClient, study_id: int) -> list[str]:
    """Object keys of the study's image rows."""
    response = client.get(f"/v1/studies/{study_id}/images")
    assert response.status_code == 200, response.text
    return sorted(image["object_key"] for image in response.json())


def _study_predictions(client: TestClient, study_id: int) -> set[int]:
    """Ids of the study's prediction rows."""
    response = client.get(f"/v1/studies/{study_id}/predictions")
    assert response.status_code == 200, response.text
    return {p["id"] for p in response.json()["data"]}


def _status_counts(metrics_text: str) -> Counter[str]:
    """HTTP requests counted per status (all endpoints) in the Prometheus exposition."""
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "care_http_requests_total":
                counts[sample.labels["status"]] += int(sample.value)
    return counts


def _recover(cluster: PrivatePostgres, client: TestClient, study_id: int) -> None:
    """Start the database again (same port) and wait until the running service reads the study again."""
    cluster.start()
    _eventually_ok(lambda: client.get(f"/v1/studies/{study_id}"), RECOVERY_SECONDS)


def _dies_before_commit(app: Any, cluster: PrivatePostgres, mp: pytest.MonkeyPatch) -> None:
    """Make the next kept prediction lose the database after its study check and inference, before its writes."""
    keep = app.state.records.keep

    async def stop_then_keep(*args: Any, **kwargs: Any) -> Any:
        mp.undo()
        cluster.stop()
        return await keep(*args, **kwargs)

    mp.setattr(app.state.records, "keep", stop_then_keep)


def test_database_outage_is_a_quick_503_and_the_service_recovers_by_itself(
    private_postgres: PrivatePostgres,  # noqa: F811 - the imported fixture
    tmp_path: Path,
) -> None:
    url = private_postgres.url.replace("postgres@", f"postgres:{PASSWORD}@")
    # no scheduled orphan sweeps: the app would otherwise wait for the sleeping sweeper at shutdown
    with service_client(tmp_path, database_url=url, orphan_sweep_seconds=0) as client:
        app: Any = client.app

        # the database is up: a patient, a chest study and a prediction stored with its image
        patient_id = _created(client.post("/v1/patients", json={"mrn": "MRN-1", "name": "Jo Doe"}))
        study_id = _created(client.post("/v1/studies", json={"patient_id": patient_id, "task": "chest"}))
        first = _predict(client, study_id, seed=1)
        assert first.status_code == 200, first.text
        assert first.json()["prediction_id"] and first.json()["study_id"] == study_id
        assert client.get(f"/v1/studies/{study_id}").status_code == 200
        images = _study_images(client, study_id)
        objects = app.state.store.list("images/")
        assert len(images) == 1 and objects == images

        # the database goes away: every request needing it is a quick, clear 503; the process keeps answering
        private_postgres.stop()
        outage: dict[str, Callable[[], Response]] = {
            "GET /v1/patients": lambda: client.get("/v1/patients"),
            "GET /v1/studies": lambda: client.get("/v1/studies"),
            "GET /v1/studies/{id}": lambda: client.get(f"/v1/studies/{study_id}"),
            "POST /v1/patients": lambda: client.post("/v1/patients", json={"mrn": OUTAGE_MRN, "name": "Al Lost"}),
            "POST /v1/predict/chest": lambda: _predict(client, study_id, seed=2),
        }
        for what, call in outage.items():
            _assert_unavailable(*_timed(call), what)
        assert client.get("/health").status_code == 200
        assert client.get("/ready").status_code == 200  # models need no database

        # it comes back on the same port: the same service, not restarted, recovers by itself
        _recover(private_postgres, client, study_id)

        # it dies in the middle of a prediction, after the study check: 503, and the stored image is removed
        with pytest.MonkeyPatch.context() as mp:
            _dies_before_commit(app, private_postgres, mp)
            _assert_unavailable(*_timed(lambda: _predict(client, study_id, seed=4)), "a prediction mid-outage")
        _recover(private_postgres, client, study_id)

        # nothing of the failed requests was stored, and storing works again
        assert _study_images(client, study_id) == images, "a failed prediction stored an image row"
        assert app.state.store.list("images/") == objects, "a failed prediction left an object in the store"
        assert _study_predictions(client, study_id) == {first.json()["prediction_id"]}
        assert client.get("/v1/patients", params={"q": OUTAGE_MRN}).json()["count"] == 0
        again = _predict(client, study_id, seed=3)
        assert again.status_code == 200, again.text
        kept = again.json()
        assert kept["study_id"] == study_id and kept["image_id"] and kept["prediction_id"]
        assert _study_predictions(client, study_id) == {first.json()["prediction_id"], kept["prediction_id"]}
        assert len(_study_images(client, study_id)) == 2 and len(app.state.store.list("images/")) == 2

        # the outages show in the metrics as 503s, not as server errors
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        counts = _status_counts(metrics.text)
        assert counts["503"] >= len(outage) + 1 and counts["500"] == 0, counts


def test_a_server_that_accepts_but_never_answers_fails_fast() -> None:
    """A hung PostgreSQL (the socket accepts, nothing answers) must fail a connection after the connect timeout,
    not hang the request forever."""
    import socket
    import threading

    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    from care_companion.records.db import PG_CONNECT_SECONDS, make_engine

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        engine = make_engine(f"postgresql+psycopg://care:{PASSWORD}@127.0.0.1:{port}/care")
        outcome: list[BaseException | None] = []

        def connect() -> None:
            try:
                with engine.connect() as connection:
                    connection.execute(text("select 1"))
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        began = time.monotonic()
        worker = threading.Thread(target=connect, daemon=True)
        worker.start()
        worker.join(PG_CONNECT_SECONDS * 6)
        waited = time.monotonic() - began
        engine.dispose()
    assert outcome, f"still connecting after {waited:.0f} s: no connect timeout"
    assert isinstance(outcome[0], OperationalError) and PASSWORD not in str(outcome[0])
