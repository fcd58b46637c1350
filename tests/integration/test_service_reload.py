"""Registry-backed serving on a real embedded MLflow store: alias fallback, reload, hot swap and polling.

Three real bundles are registered as versions of "chest": v1 always answers normal, v2 always pneumonia,
v3 has a corrupt ONNX file (it registers, but cannot be loaded).
"""

from __future__ import annotations

import io
import os
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from care_companion.config import Settings
from care_companion.models.bundle import ONNX_FILE
from care_companion.registry.models import register_bundle, set_alias
from care_companion.registry.tracking import start_run, tracking_client
from care_companion.serving.app import create_app
from tests.conftest import write_bundle
from tests.helpers import migrated, sign_in

ADMIN = ("ops", "admin", "radiology")

pytestmark = pytest.mark.integration

LABEL_OF_VERSION = {"1": "normal", "2": "pneumonia"}


def _png(seed: int = 0) -> bytes:
    pixels = (np.random.default_rng(seed).random((96, 80)) * 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def reg_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings on a fresh embedded MLflow store shared by the module; no CARE_/MLFLOW_ variables leak in."""
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith(("CARE_", "MLFLOW_")):
                mp.delenv(name)
        yield Settings(data_dir=tmp_path_factory.mktemp("serve-registry") / "care-data", seed=7)


@pytest.fixture(scope="module")
def versions(reg_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """v1 (normal), v2 (pneumonia) and v3 (corrupt ONNX) of model "chest"."""
    work = tmp_path_factory.mktemp("bundles")
    normal = write_bundle(work / "normal", logits=[3.0, 0.0, 0.0, -2.0])
    pneumonia = write_bundle(work / "pneumonia", logits=[0.0, 3.0, 1.0, -2.0])
    broken = shutil.copytree(normal, work / "broken")
    (broken / ONNX_FILE).write_bytes(b"this is not an onnx model")
    out: dict[str, int] = {}
    for name, bundle in (("normal", normal), ("pneumonia", pneumonia), ("broken", broken)):
        with start_run(reg_settings, "chest", name, {"task": "chest"}) as run:
            out[name] = register_bundle(bundle, task="chest", run_id=run.run_id, settings=reg_settings)
    assert out == {"normal": 1, "pneumonia": 2, "broken": 3}
    return out


def point(settings: Settings, **aliases: int | None) -> None:
    """Set (a version) or remove (None) registry aliases of "chest"."""
    client = tracking_client(settings)
    for alias, version in aliases.items():
        if version is None:
            if alias in (client.get_registered_model("chest").aliases or {}):
                client.delete_registered_model_alias("chest", alias)
        else:
            set_alias("chest", version, alias, settings)


def serve_settings(reg_settings: Settings, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": reg_settings.data_dir,
        "chest_model": None,
        "serve_alias": "production",
        "serve_fallback_alias": "staging",
        "model_poll_seconds": 0,
    }
    values.update(overrides)
    return migrated(Settings(**values))  # type: ignore[arg-type]


def predict(client: TestClient, seed: int = 0) -> dict:
    response = client.post("/v1/predict/chest", files={"file": (f"{seed}.png", _png(seed), "image/png")})
    assert response.status_code == 200, response.text
    return response.json()


def served_version(client: TestClient) -> str | None:
    data = client.get("/v1/models").json()["data"]
    return data[0]["version"] if data else None


# ------------------------------------------------------------------------------------------------- tests


def test_fallback_alias_then_reload_swaps_to_production(reg_settings: Settings, versions: dict[str, int]) -> None:
    point(reg_settings, staging=versions["normal"], production=None)
    with TestClient(create_app(serve_settings(reg_settings))) as client:
        sign_in(client, ADMIN)
        result = predict(client)
        assert result["label"] == "normal" and result["decision"]["positive"] is False
        assert result["model"] == {"name": "chest", "version": "1", "alias": "staging", "demo": False}
        [info] = client.get("/v1/models").json()["data"]
        assert info["source"] == "models:/chest/1" and info["alias"] == "staging"
        assert client.get("/ready").json()["models"] == {"chest": "1"}

        point(reg_settings, production=versions["pneumonia"])
        assert predict(client)["model"]["version"] == "1"  # nothing changes until a reload (polling is off)
        reload = client.post("/v1/admin/reload")
        assert reload.status_code == 200, reload.text
        change = reload.json()["changes"]["chest"]
        assert change.startswith("swapped"), change
        assert change == "swapped models:/chest/1 -> models:/chest/2"
        assert [m["version"] for m in reload.json()["models"]] == ["2"]

        result = predict(client)
        assert result["label"] == "pneumonia" and result["decision"]["positive"] is True
        assert result["model"]["version"] == "2" and result["model"]["alias"] == "production"
        assert client.post("/v1/admin/reload").json()["changes"]["chest"] == "unchanged: models:/chest/2"

        text = client.get("/metrics").text
        assert 'version="2"' in text and 'alias="production"' in text  # care_model_info follows the swap


def test_requests_during_reloads_all_succeed(reg_settings: Settings, versions: dict[str, int]) -> None:
    point(reg_settings, production=versions["normal"])
    with TestClient(create_app(serve_settings(reg_settings, max_wait_ms=2))) as client:
        sign_in(client, ADMIN)
        assert served_version(client) == "1"
        reloads_done = threading.Event()
        changes: list[str] = []
        results: list[tuple[int, str, str | None]] = []
        lock = threading.Lock()

        def reloader() -> None:  # v1 -> v2 -> v1 -> v2, each swap under traffic
            try:
                for target in ("pneumonia", "normal", "pneumonia"):
                    time.sleep(0.1)
                    point(reg_settings, production=versions[target])
                    changes.append(client.post("/v1/admin/reload").json()["changes"]["chest"])
            finally:
                reloads_done.set()

        def requester(seed: int) -> None:
            while True:
                with lock:
                    if reloads_done.is_set() and len(results) >= 30:
                        return
                response = client.post("/v1/predict/chest", files={"file": ("x.png", _png(seed), "image/png")})
                body = response.json()
                outcome = (
                    response.status_code,
                    body.get("label", body.get("error")),
                    body.get("model", {}).get("version"),
                )
                with lock:
                    results.append(outcome)

        with ThreadPoolExecutor(max_workers=6) as pool:
            workers = [pool.submit(requester, seed) for seed in range(5)]
            pool.submit(reloader).result(timeout=120)
            for worker in workers:
                worker.result(timeout=120)
        assert changes == [
            "swapped models:/chest/1 -> models:/chest/2",
            "swapped models:/chest/2 -> models:/chest/1",
            "swapped models:/chest/1 -> models:/chest/2",
        ]
        assert len(results) >= 30
        assert all(status == 200 for status, _, _ in results), [r for r in results if r[0] != 200]
        for _, label, version in results:
            assert version in LABEL_OF_VERSION and label == LABEL_OF_VERSION[version]  # one model per answer
        assert {version for _, _, version in results} == {"1", "2"}  # traffic really spanned the swaps
        assert client.get("/health").status_code == 200
        assert predict(client)["model"]["version"] == "2"


def test_poller_follows_a_promotion_without_reload(reg_settings: Settings, versions: dict[str, int]) -> None:
    point(reg_settings, production=versions["normal"])
    with TestClient(create_app(serve_settings(reg_settings, model_poll_seconds=0.2))) as client:
        sign_in(client, ADMIN)
        assert served_version(client) == "1"
        point(reg_settings, production=versions["pneumonia"])
        deadline = time.monotonic() + 10
        while served_version(client) != "2":
            assert time.monotonic() < deadline, "the poller did not pick up the promotion within 10 s"
            time.sleep(0.1)
        result = predict(client)
        assert result["label"] == "pneumonia" and result["model"]["version"] == "2"


def test_unloadable_version_leaves_the_old_model_serving(reg_settings: Settings, versions: dict[str, int]) -> None:
    point(reg_settings, production=versions["pneumonia"])
    with TestClient(create_app(serve_settings(reg_settings))) as client:
        sign_in(client, ADMIN)
        assert predict(client)["model"]["version"] == "2"
        point(reg_settings, production=versions["broken"])
        reload = client.post("/v1/admin/reload")
        assert reload.status_code == 200, reload.text
        change = reload.json()["changes"]["chest"]
        assert change.startswith("kept models:/chest/2"), change
        assert "models:/chest/3 could not be loaded" in change
        result = predict(client)
        assert result["label"] == "pneumonia" and result["model"]["version"] == "2"
        assert client.get("/ready").status_code == 200
        assert served_version(client) == "2"
        # fixing the alias lets the next reload move on
        point(reg_settings, production=versions["normal"])
        assert (
            client.post("/v1/admin/reload").json()["changes"]["chest"] == "swapped models:/chest/2 -> models:/chest/1"
        )
        assert predict(client)["label"] == "normal"


def test_unloadable_version_at_start_is_unavailable(reg_settings: Settings, versions: dict[str, int]) -> None:
    point(reg_settings, production=versions["broken"])
    with TestClient(create_app(serve_settings(reg_settings))) as client:
        sign_in(client, ADMIN)
        assert client.get("/ready").status_code == 503
        response = client.post("/v1/predict/chest", files={"file": ("a.png", _png(), "image/png")})
        assert response.status_code == 503
        assert response.json()["error"] == "model_unavailable"
        assert "models:/chest/3 could not be loaded" in response.json()["detail"]
        point(reg_settings, production=versions["pneumonia"])
        assert client.post("/v1/admin/reload").json()["changes"]["chest"] == "loaded models:/chest/2"
        assert predict(client)["label"] == "pneumonia"


def test_configured_alias_reference_is_followed(
    reg_settings: Settings, versions: dict[str, int], tmp_path: Path
) -> None:
    point(reg_settings, canary=versions["pneumonia"])
    settings = serve_settings(reg_settings, chest_model="models:/chest@canary")
    with TestClient(create_app(migrated(settings))) as client:
        sign_in(client, ADMIN)
        result = predict(client)
        assert result["model"]["version"] == "2" and result["model"]["alias"] == "canary"
        point(reg_settings, canary=versions["normal"])
        assert client.post("/v1/admin/reload").json()["changes"]["chest"].startswith("swapped")
        assert predict(client)["label"] == "normal"
        point(reg_settings, canary=None)
        change = client.post("/v1/admin/reload").json()["changes"]["chest"]
        assert change.startswith("kept models:/chest/1") and "no model 'chest' with alias 'canary'" in change
        assert predict(client)["label"] == "normal"


def test_a_canary_answers_its_share_of_patients_and_each_patient_sticks(
    reg_settings: Settings, versions: dict[str, int]
) -> None:
    """production = v1 (normal), canary = v2 (pneumonia), CARE_CANARY_PERCENT=50: each patient's studies are
    answered by the model the patient's bucket names, every time and after a restart; anonymous predictions by
    production; the results and /v1/models name the version; without the canary alias everyone gets production."""
    from care_companion.registry.canary import routes_to_canary

    point(reg_settings, production=versions["normal"], staging=None, canary=versions["pneumonia"])
    settings = serve_settings(reg_settings, canary_percent=50)

    def upload(client: TestClient, patient: int, seed: int) -> dict:
        response = client.post(
            "/v1/predict/chest",
            files={"file": (f"{seed}.png", _png(seed), "image/png")},
            data={"patient_id": str(patient)},
        )
        assert response.status_code == 200, response.text
        return response.json()

    seen: dict[int, str] = {}
    with TestClient(create_app(settings)) as client:
        sign_in(client, ADMIN)
        listed = client.get("/v1/models").json()["data"]
        assert [(m["version"], m["alias"]) for m in listed] == [("1", "production"), ("2", "canary")]
        patients = [
            client.post(
                "/v1/patients/match", json={"mrn": f"C-{i}", "name": f"P {i}", "department": "radiology"}
            ).json()["id"]
            for i in range(16)
        ]
        for i, patient in enumerate(patients):
            answer = upload(client, patient, i)
            expected = "2" if routes_to_canary("chest", patient, 50) else "1"
            assert answer["model"]["version"] == expected and answer["label"] == LABEL_OF_VERSION[expected]
            again = upload(client, patient, 100 + i)  # the same patient's next study: the same model
            assert again["model"]["version"] == expected
            seen[patient] = expected
        assert set(seen.values()) == {"1", "2"}  # both models answered someone
        assert predict(client)["model"]["version"] == "1"  # anonymous: production
    with TestClient(create_app(settings)) as client:  # a restart (or another replica) routes alike
        sign_in(client, ADMIN)
        for i, patient in enumerate(patients):
            assert upload(client, patient, 200 + i)["model"]["version"] == seen[patient]
        point(reg_settings, canary=None)
        changes = client.post("/v1/admin/reload").json()["changes"]
        assert "canary ended" in changes["chest"]
        assert {upload(client, p, 300)["model"]["version"] for p in patients} == {"1"}


def test_shadow_mode_scores_production_studies_with_the_canary_and_never_shows_it(
    reg_settings: Settings, versions: dict[str, int]
) -> None:
    """production = v1 (normal), canary = v2 (pneumonia) in shadow mode at 0%: every study is answered by
    production, and only production's answer is ever returned (results, the study's predictions, the worklist);
    the canary's answers on the same films are kept and the canary report compares the two; each replica's traffic
    per version reaches the records at shutdown."""
    from sqlalchemy import func, select

    from care_companion.records.db import make_engine, session_factory
    from care_companion.records.models import ServingStat, ShadowPrediction

    point(reg_settings, production=versions["normal"], staging=None, canary=versions["pneumonia"])
    settings = serve_settings(reg_settings, canary_mode="shadow", canary_percent=0, serving_stats_seconds=0)
    engine = make_engine(settings.db_url)
    sessions = session_factory(engine)

    def shadows() -> int:
        with sessions() as session:
            return session.scalar(select(func.count()).select_from(ShadowPrediction)) or 0

    before = shadows()
    try:
        with TestClient(create_app(settings)) as client:
            sign_in(client, ADMIN)
            studies = []
            for i in range(6):
                patient = client.post(
                    "/v1/patients/match", json={"mrn": f"S-{i}", "name": f"S {i}", "department": "radiology"}
                ).json()["id"]
                response = client.post(
                    "/v1/predict/chest",
                    files={"file": (f"{i}.png", _png(i), "image/png")},
                    data={"patient_id": str(patient)},
                )
                assert response.status_code == 200, response.text
                answer = response.json()
                assert answer["model"]["version"] == "1" and answer["label"] == "normal"
                studies.append(answer["study_id"])
            deadline = time.monotonic() + 20
            while shadows() < before + 6 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert shadows() == before + 6
            listed = {i["study_id"]: i for i in client.get("/v1/worklist", params={"limit": 500}).json()["data"]}
            assert all(listed[s]["label"] == "normal" and listed[s]["prediction_id"] for s in studies)
            for study in studies:
                shown = client.get(f"/v1/studies/{study}/predictions").json()["data"]
                assert [(p["model_version"], p["label"]) for p in shown] == [("1", "normal")]
                verdict = client.post(f"/v1/studies/{study}/feedback", json={"true_label": "pneumonia"})
                assert verdict.status_code == 201, verdict.text
            report = client.get("/v1/releases/chest")
            assert report.status_code == 200, report.text
            body = report.json()
            assert body["mode"] == "shadow" and body["canary"]["version"] == 2
            assert body["agreement"]["films"] >= 6 and body["agreement"]["same_label"]["hits"] == 0
            canary, production = body["canary"], body["production"]
            assert canary["shadowed_studies"] >= 6 and canary["sensitivity"]["hits"] == canary["sensitivity"]["total"]
            assert production["sensitivity"]["hits"] == 0 and production["sensitivity"]["total"] >= 6
        with sessions() as session:
            rows = session.scalars(select(ServingStat)).all()
        by_role = {(r.role, r.model_version): r.requests for r in rows}
        assert by_role.get(("production", "1"), 0) >= 6 and by_role.get(("shadow", "2"), 0) >= 6
    finally:
        point(reg_settings, canary=None)
        engine.dispose()


def test_release_rollback_under_load_swaps_the_model_without_failed_requests(
    reg_settings: Settings, versions: dict[str, int]
) -> None:
    """Production = v2 after a promotion from v1; ``release rollback`` under traffic: the service follows (a
    reload, as the poller would within seconds), every request is answered, by one model each, and v1 answers
    after it."""
    from care_companion.records.db import make_engine, session_factory
    from care_companion.registry.models import note_previous_production
    from care_companion.release.promotion import rollback

    point(reg_settings, production=versions["pneumonia"], staging=None, canary=None)
    note_previous_production("chest", versions["normal"], reg_settings)
    settings = serve_settings(reg_settings, max_wait_ms=2)
    engine = make_engine(settings.db_url)
    results: list[tuple[int, str | None]] = []
    done = threading.Event()
    try:
        with TestClient(create_app(settings)) as client:
            sign_in(client, ADMIN)
            assert served_version(client) == "2"

            def requester(seed: int) -> None:
                while not done.is_set() or len(results) < 40:
                    response = client.post("/v1/predict/chest", files={"file": ("x.png", _png(seed), "image/png")})
                    results.append((response.status_code, response.json().get("model", {}).get("version")))

            with ThreadPoolExecutor(max_workers=5) as pool:
                workers = [pool.submit(requester, seed) for seed in range(4)]
                time.sleep(0.3)
                decision = rollback("chest", settings, session_factory(engine))
                change = client.post("/v1/admin/reload").json()["changes"]["chest"]
                time.sleep(0.3)
                done.set()
                for worker in workers:
                    worker.result(timeout=120)
            assert decision.version == 1 and change == "swapped models:/chest/2 -> models:/chest/1"
            assert all(status == 200 for status, _ in results), [r for r in results if r[0] != 200]
            assert {version for _, version in results} == {"1", "2"}
            assert predict(client)["model"]["version"] == "1"
    finally:
        engine.dispose()
