"""Monitoring over HTTP: drift checks of real uploads, their history in the database, the Prometheus gauges, and
model health with online performance from radiologists' verdicts."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from care_companion.data.synthetic_chest import synth_chest
from care_companion.monitoring.drift import FAMILIES
from tests.helpers import seed_users, service_client, tokens_for

USERS = (("rad", "radiologist", "er"), ("tech", "technician", "er"))
MIN_IMAGES = 10
CHECK_EVERY = 5


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root: Path = tmp_path_factory.mktemp("monitoring")
    with service_client(
        root,
        profile=True,
        login=False,
        drift_min_images=MIN_IMAGES,
        drift_check_every=CHECK_EVERY,
        drift_permutations=100,
        monitor_refresh_seconds=0,
    ) as client:
        with client.app.state.sessions() as session, session.begin():  # type: ignore[attr-defined]
            seed_users(session, USERS)
        tokens = tokens_for(client.app.state.settings, USERS)  # type: ignore[attr-defined]
        yield {"client": client, "auth": {u: {"Authorization": f"Bearer {t}"} for u, t in tokens.items()}}


def _upload(client: Any, auth: dict[str, str], pixels: np.ndarray, **data: Any) -> dict[str, Any]:
    answer = client.post(
        "/v1/predict/chest", files={"file": ("x.png", _png(pixels), "image/png")}, data=data, headers=auth
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_monitoring_needs_a_login(service: dict[str, Any]) -> None:
    client = service["client"]
    for path in ("/v1/monitoring/drift", "/v1/monitoring/health"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers=service["auth"]["tech"]).status_code == 200
    unknown = client.get("/v1/monitoring/drift?task=knee", headers=service["auth"]["tech"])
    assert unknown.status_code == 422 and unknown.json()["error"] == "unknown_task"
    assert client.get("/v1/releases/chest").status_code == 401
    release = client.get("/v1/releases/chest", headers=service["auth"]["tech"])
    assert release.status_code == 200 and release.json()["verdict"] == "no_canary"  # a bundle folder, no registry
    unknown = client.get("/v1/releases/knee", headers=service["auth"]["tech"])
    assert unknown.status_code == 422 and unknown.json()["error"] == "unknown_task"


def test_drift_of_strange_inputs_is_found_published_and_kept(service: dict[str, Any]) -> None:
    client, auth = service["client"], service["auth"]["tech"]
    rng = np.random.default_rng(3)
    early = client.get("/v1/monitoring/drift?task=chest", headers=auth).json()["tasks"]["chest"]["status"]
    assert early["available"] is True and early["drifted"] is None  # not enough inputs yet

    sent = 3 * CHECK_EVERY + MIN_IMAGES
    for _ in range(sent):  # inverted, noisy films: nothing like the training images
        film = 255 - synth_chest("normal", rng, 96)
        _upload(client, auth, np.clip(film + rng.normal(0, 40, film.shape), 0, 255).astype(np.uint8))
    report = client.get("/v1/monitoring/drift?task=chest&refresh=true", headers=auth).json()["tasks"]["chest"]
    status = report["status"]
    assert status["window_inputs"] == sent and status["window_images"] == sent
    assert set(status["p_values"]) == set(FAMILIES)
    assert status["drifted"] is True and "features" in status["flagged"]
    assert status["p_values"]["features"] < 0.05 and status["p_values"]["rejections"] is not None
    assert [f["name"] for f in status["features"]][:2] == ["mean", "std"]
    history = report["history"]
    assert len(history) >= 2 and history[-1]["drifted"] is True  # checks ran while uploads came in, and now
    assert all(point["model_version"] == status["model_version"] for point in history)

    metrics = client.get("/metrics").text
    assert 'care_drift_alarm{task="chest"} 1.0' in metrics
    assert f'care_drift_window_images{{task="chest"}} {float(sent)}' in metrics
    adjusted = status["p_values"]["features"]
    line = next(x for x in metrics.splitlines() if x.startswith('care_drift_p_value{task="chest",test="features"}'))
    assert float(line.split()[-1]) == pytest.approx(adjusted)


def test_wrist_without_a_model_reports_why(service: dict[str, Any]) -> None:
    report = service["client"].get("/v1/monitoring/drift", headers=service["auth"]["tech"]).json()
    assert report["tasks"]["wrist"]["status"] is None and "wrist" in report["tasks"]["wrist"]["reason"]
    health = service["client"].get("/v1/monitoring/health?task=wrist", headers=service["auth"]["tech"]).json()
    assert health["tasks"]["wrist"]["model"]["loaded"] is False
    metrics = service["client"].get("/metrics").text  # nothing configured or registered: no alert expected
    assert 'care_model_expected{task="wrist"} 0.0' in metrics and 'care_model_expected{task="chest"} 1.0' in metrics


def test_health_counts_traffic_and_online_performance_from_verdicts(service: dict[str, Any]) -> None:
    client, tech, rad = service["client"], service["auth"]["tech"], service["auth"]["rad"]
    before = client.get("/v1/monitoring/health?task=chest", headers=tech).json()["tasks"]["chest"]
    rng = np.random.default_rng(4)
    patient = client.post("/v1/patients", json={"mrn": "MON-1", "name": "A B", "department": "er"}, headers=tech)
    assert patient.status_code == 201, patient.text
    truths = ["pneumonia", "normal", "tuberculosis"]  # the constant model always answers pneumonia
    for truth in truths:
        study = client.post("/v1/studies", json={"patient_id": patient.json()["id"], "task": "chest"}, headers=tech)
        assert study.status_code == 201, study.text
        _upload(client, tech, synth_chest("normal", rng, 96), study_id=study.json()["id"])
        verdict = client.post(f"/v1/studies/{study.json()['id']}/feedback", json={"true_label": truth}, headers=rad)
        assert verdict.status_code == 201, verdict.text

    after = client.get("/v1/monitoring/health?task=chest", headers=tech).json()["tasks"]["chest"]
    assert sum(after["predictions"].values()) == sum(before["predictions"].values()) + len(truths)
    assert after["predictions"]["pneumonia"] >= len(truths)
    assert after["traffic"]["predictions"] >= len(truths) and after["traffic"]["latency_ms_p95"] > 0
    online = after["online"]
    assert (online["studies"], online["positives"], online["negatives"]) == (3, 2, 1)
    assert online["sensitivity"] == 1.0 and online["specificity"] == 0.0
    assert online["accuracy"] == pytest.approx(1 / 3) and online["false_negatives"] == 0
    model = after["model"]
    assert model["loaded"] is True and model["precision"] == "fp32"
    metrics = client.get("/metrics").text
    assert (
        'care_online_sensitivity{task="chest"} 1.0' in metrics and 'care_online_confirmed{task="chest"} 3.0' in metrics
    )
