"""The inference service's HTTP contract, through FastAPI's TestClient with real ONNX bundles (64 px resnet18).

Covers result fields, the 422 for non-chest films, batches, the wrist placeholder, readiness without a model,
model listing, metrics, OpenAPI, admin reload and every request-level error (always ``{"error", "detail"}``).
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from care_companion.config import Settings
from care_companion.models.bundle import load_meta, save_meta
from care_companion.serving.app import create_app
from tests.conftest import write_bundle
from tests.helpers import PNEUMONIA_LOGITS, RESULT_KEYS, migrated, sign_in

if TYPE_CHECKING:  # starlette's TestClient answers with httpx2 responses
    from httpx2 import Response

MAX_UPLOAD = 200_000
BATCH_MAX = 4
ADMIN = ("boss", "admin", "radiology")
UNKNOWN_LOGITS = [0.0, 0.0, 0.0, 5.0]
ALL_PATHS = {
    "/v1/predict/{task}",
    "/v1/predict/{task}/batch",
    "/v1/tasks",
    "/predict_chest",
    "/predict_wrist",
    "/health",
    "/ready",
    "/metrics",
    "/v1/models",
    "/v1/admin/reload",
    "/v1/auth/token",
    "/v1/auth/me",
    "/v1/patients",
    "/v1/patients/match",
    "/v1/patients/{patient_id}",
    "/v1/studies",
    "/v1/studies/{study_id}",
    "/v1/studies/{study_id}/images",
    "/v1/studies/{study_id}/predictions",
    "/fhir/Device/{device_id}",
    "/fhir/{resource_type}/{prediction_id}",
    "/dicomweb/studies",
    "/dicomweb/studies/{study_uid}",
    "/dicomweb/studies/{study_uid}/series",
    "/dicomweb/studies/{study_uid}/series/{series_uid}",
    "/dicomweb/studies/{study_uid}/series/{series_uid}/instances",
    "/dicomweb/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}",
    "/v1/dicom/audit",
    "/v1/predictions/{prediction_id}/heatmap.png",
    "/v1/worklist",
    "/v1/images/{image_id}/film.png",
    "/v1/predictions/{prediction_id}/heatmap/{view}.png",
    "/v1/studies/{study_id}/feedback",
    "/v1/audit",
    "/v1/feedback/export.csv",
    "/v1/monitoring/drift",
    "/v1/monitoring/health",
    "/v1/releases/{task}",
    "/v1/users",
    "/v1/users/{user_id}",
    "/v1/users/{user_id}/api-keys",
    "/v1/users/{user_id}/api-keys/{key_id}",
    "/v1/admin/models/{task}/versions",
    "/v1/admin/models/{task}/aliases",
}


# ------------------------------------------------------------------------------------------------ helpers


def png_bytes(width: int = 120, height: int = 100, seed: int = 0) -> bytes:
    pixels = (np.random.default_rng(seed).random((height, width)) * 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def assert_error(response: Response, status: int, code: str) -> dict[str, str]:
    """The response is the one JSON error body with this status and code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    assert body["error"] == code, body
    assert isinstance(body["detail"], str) and body["detail"].strip()
    return body


def samples(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of ``GET /metrics`` by (sample name, labels)."""
    response = client.get("/metrics")
    assert response.status_code == 200
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def multipart(field: str, filename: str, data: bytes, content_type: str = "image/png") -> tuple[bytes, str]:
    """A hand-made multipart body with one file part, and its Content-Type header."""
    boundary = "care-test-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def clean_env() -> Iterator[None]:
    """No CARE_/MLFLOW_ variables of the machine leak into the service under test."""
    import os

    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith(("CARE_", "MLFLOW_")):
                mp.delenv(name)
        yield


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return {
        "pneumonia": write_bundle(root / "pneumonia", logits=PNEUMONIA_LOGITS),
        "unknown": write_bundle(root / "unknown", logits=UNKNOWN_LOGITS),
    }


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("service") / "care-data"


def make_settings(data_dir: Path, chest_model: Path | None, **overrides: object) -> Settings:
    settings = Settings(
        data_dir=data_dir,
        chest_model=str(chest_model) if chest_model else None,
        model_poll_seconds=0,
        max_upload_bytes=MAX_UPLOAD,
        batch_max_images=BATCH_MAX,
        **overrides,  # type: ignore[arg-type]
    )
    return migrated(settings)


@pytest.fixture(scope="module")
def client(bundles: dict[str, Path], data_dir: Path) -> Iterator[TestClient]:
    """The service with the pneumonia bundle, signed in as a technician."""
    app = create_app(make_settings(data_dir, bundles["pneumonia"]))
    with TestClient(app) as test_client:
        sign_in(test_client)
        yield test_client


@pytest.fixture(scope="module")
def unknown_client(bundles: dict[str, Path], data_dir: Path) -> Iterator[TestClient]:
    """The service with a bundle that calls every image "unknown" (not a chest X-ray)."""
    with TestClient(create_app(make_settings(data_dir, bundles["unknown"]))) as test_client:
        sign_in(test_client)
        yield test_client


@pytest.fixture(scope="module")
def empty_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The service with no model at all: empty data dir, no chest model configured."""
    settings = make_settings(tmp_path_factory.mktemp("empty") / "care-data", None)
    with TestClient(create_app(settings)) as test_client:
        sign_in(test_client)
        yield test_client


# ------------------------------------------------------------------------------------------- predictions


def check_result(body: dict, *, request_id: str | None = None) -> None:
    """The full result shape, for the pneumonia bundle served from a folder."""
    assert set(body) == RESULT_KEYS
    assert body["task"] == "chest"
    assert body["label"] == "pneumonia"
    probs = body["probabilities"]
    assert list(probs) == ["normal", "pneumonia", "tuberculosis", "unknown"]
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
    assert probs["pneumonia"] == pytest.approx(0.839, abs=1e-3)  # softmax of the constant logits
    decision = body["decision"]
    assert set(decision) == {"positive", "score", "threshold", "rule"}
    assert decision["positive"] is True
    assert decision["score"] == pytest.approx(probs["pneumonia"] + probs["tuberculosis"], abs=1e-5)
    assert decision["threshold"] == 0.5
    assert "P(pneumonia) + P(tuberculosis) >= 0.5000" in decision["rule"]
    assert body["confidence"] == "high" and body["confidence_reasons"] == []
    assert body["review_required"] is True
    assert "radiologist" in body["warning"].lower()
    assert body["model"] == {"name": "chest", "version": None, "alias": None, "demo": False}
    assert body["views_used"] == ["frontal"]
    assert body["latency_ms"] > 0
    if request_id is not None:
        assert body["request_id"] == request_id


@pytest.mark.parametrize("path", ["/v1/predict/chest", "/predict_chest"])
def test_predict_chest_result(client: TestClient, path: str) -> None:
    request_id = f"req-{path.strip('/').replace('/', '.')}"
    response = client.post(
        path, files={"file": ("film.png", png_bytes(), "image/png")}, headers={"X-Request-ID": request_id}
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == request_id
    check_result(response.json(), request_id=request_id)


def test_request_id_is_generated_when_absent_or_unsafe(client: TestClient) -> None:
    plain = client.post("/v1/predict/chest", files={"file": ("a.png", png_bytes(), "image/png")})
    unsafe = client.post(
        "/v1/predict/chest",
        files={"file": ("a.png", png_bytes(), "image/png")},
        headers={"X-Request-ID": "bad id with spaces; drop table"},
    )
    for response in (plain, unsafe):
        assert response.status_code == 200
        rid = response.json()["request_id"]
        assert len(rid) == 32 and int(rid, 16) >= 0  # a uuid4 hex
        assert response.headers["x-request-id"] == rid
    assert plain.json()["request_id"] != unsafe.json()["request_id"]


def test_file_part_without_content_type_and_dicom_type_are_accepted(client: TestClient) -> None:
    for content_type in ("application/octet-stream", "application/dicom", "image/x-anything"):
        response = client.post("/v1/predict/chest", files={"file": ("film", png_bytes(), content_type)})
        assert response.status_code == 200, (content_type, response.text)


def test_not_a_chest_xray_is_422(unknown_client: TestClient) -> None:
    before = samples(unknown_client)
    for path in ("/v1/predict/chest", "/predict_chest"):
        response = unknown_client.post(path, files={"file": ("cat.png", png_bytes(), "image/png")})
        body = assert_error(response, 422, "not_a_chest_xray")
        assert "cat.png" in body["detail"] and "chest" in body["detail"]
    after = samples(unknown_client)
    key = {"task": "chest", "reason": "not_a_chest_xray"}
    assert value(after, "care_rejected_inputs_total", **key) - value(before, "care_rejected_inputs_total", **key) == 2
    assert value(after, "care_predictions_total", task="chest", label="unknown", decision="negative") == 0


def test_not_a_chest_xray_inside_a_batch_is_a_per_item_error(unknown_client: TestClient) -> None:
    response = unknown_client.post(
        "/v1/predict/chest/batch", files=[("files", ("a.png", png_bytes(), "image/png"))] * 2
    )
    assert response.status_code == 200
    items = response.json()["items"]
    assert [i["ok"] for i in items] == [False, False]
    assert {i["error"]["error"] for i in items} == {"not_a_chest_xray"}


# ------------------------------------------------------------------------------------------------ batches


def test_batch_results_in_input_order_with_per_item_errors(client: TestClient) -> None:
    files = [
        ("files", ("first.png", png_bytes(seed=1), "image/png")),
        ("files", ("empty.png", b"", "image/png")),
        ("files", ("garbage.bin", b"this is plain text, not pixels" * 4, "application/octet-stream")),
        ("files", ("last.png", png_bytes(seed=2), "image/png")),
    ]
    response = client.post("/v1/predict/chest/batch", files=files, headers={"X-Request-ID": "batch-1"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["request_id"] == "batch-1"
    assert body["count"] == 4 and body["succeeded"] == 2
    assert body["review_required"] is True and "radiologist" in body["warning"].lower()
    items = body["items"]
    assert [i["index"] for i in items] == [0, 1, 2, 3]
    assert [i["filename"] for i in items] == ["first.png", "empty.png", "garbage.bin", "last.png"]
    assert [i["ok"] for i in items] == [True, False, False, True]
    for i in (0, 3):
        assert items[i]["error"] is None
        check_result(items[i]["result"], request_id=f"batch-1-{i}")
    assert items[1]["result"] is None and items[2]["result"] is None
    assert items[1]["error"]["error"] == "empty" and set(items[1]["error"]) == {"error", "detail"}
    assert items[2]["error"]["error"] == "not_an_image"
    assert "garbage.bin" in items[2]["error"]["detail"]


def test_batch_over_the_image_limit_is_413(client: TestClient) -> None:
    files = [("files", (f"{i}.png", png_bytes(seed=i), "image/png")) for i in range(BATCH_MAX + 1)]
    body = assert_error(client.post("/v1/predict/chest/batch", files=files), 413, "too_many_images")
    assert str(BATCH_MAX) in body["detail"]
    ok = client.post("/v1/predict/chest/batch", files=files[:BATCH_MAX])
    assert ok.status_code == 200 and ok.json()["succeeded"] == BATCH_MAX


def test_batch_without_files_is_invalid(client: TestClient) -> None:
    response = client.post("/v1/predict/chest/batch", files={"other": ("a.png", png_bytes(), "image/png")})
    body = assert_error(response, 422, "invalid_request")
    assert "files" in body["detail"]


def test_batch_part_with_text_content_type_is_415(client: TestClient) -> None:
    files = [("files", ("a.png", png_bytes(), "image/png")), ("files", ("notes.txt", b"hello", "text/plain"))]
    body = assert_error(client.post("/v1/predict/chest/batch", files=files), 415, "unsupported_media_type")
    assert "notes.txt" in body["detail"]


# -------------------------------------------------------------------------------------------------- wrist


@pytest.mark.parametrize("path", ["/v1/predict/wrist", "/predict_wrist"])
def test_wrist_without_a_model_is_503(client: TestClient, path: str) -> None:
    files = {"pa": ("pa.png", png_bytes(), "image/png"), "lateral": ("lat.png", png_bytes(seed=3), "image/png")}
    response = client.post(path, files=files)
    body = assert_error(response, 503, "model_unavailable")
    assert "wrist" in body["detail"] and "CARE_MODELS__wrist" in body["detail"]
    assert response.headers.get("retry-after") == "1"


# --------------------------------------------------------------------------------------- no model at all


def test_service_without_any_model(empty_client: TestClient) -> None:
    health = empty_client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    ready = empty_client.get("/ready")
    assert ready.status_code == 503
    assert ready.json()["status"] == "not_ready" and ready.json()["models"] == {}
    assert "chest" in ready.json()["detail"] and "wrist" in ready.json()["detail"]
    for path in ("/v1/predict/chest", "/predict_chest"):
        response = empty_client.post(path, files={"file": ("a.png", png_bytes(), "image/png")})
        body = assert_error(response, 503, "model_unavailable")
        assert "chest" in body["detail"] and "CARE_MODELS__chest" in body["detail"]
    batch = empty_client.post("/v1/predict/chest/batch", files=[("files", ("a.png", png_bytes(), "image/png"))])
    assert_error(batch, 503, "model_unavailable")
    listed = empty_client.get("/v1/models").json()
    assert listed["data"] == [] and set(listed["unavailable"]) == {"chest", "wrist"}
    found = samples(empty_client)
    assert value(found, "care_model_loaded", task="chest") == 0


def test_ready_with_a_model(client: TestClient, bundles: dict[str, Path]) -> None:
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert ready.json()["models"] == {"chest": str(bundles["pneumonia"])}
    assert "wrist" in ready.json()["detail"]


# ------------------------------------------------------------------------------------- models and reload


def test_models_lists_the_loaded_model(client: TestClient, bundles: dict[str, Path]) -> None:
    body = client.get("/v1/models").json()
    assert set(body) == {"data", "unavailable"}
    [model] = body["data"]
    assert model["task"] == "chest" and model["name"] == "chest"
    assert model["source"] == str(bundles["pneumonia"])
    assert model["version"] is None and model["alias"] is None
    assert model["classes"] == ["normal", "pneumonia", "tuberculosis", "unknown"]
    assert model["positives"] == ["pneumonia", "tuberculosis"] and model["reject"] == "unknown"
    assert model["thresholds"] == {"abnormal": 0.5, "pneumonia": 0.5, "tuberculosis": 0.5}
    assert model["input_size"] == 64 and model["precision"] == "fp32" and model["backbone"] == "resnet18"
    assert model["dataset_version"] == "v-test"
    assert list(body["unavailable"]) == ["wrist"]
    assert "wrist" in body["unavailable"]["wrist"]


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({"Authorization": ""}, 401, "unauthorized"),
        ({"Authorization": "Bearer wrong"}, 401, "invalid_token"),
        ({"Authorization": "Basic Ym9zczpwdw=="}, 401, "unauthorized"),
        ({}, 403, "forbidden"),  # the client's own technician token: signed in, but not an admin
    ],
)
def test_admin_reload_needs_an_admin(client: TestClient, headers: dict[str, str], status: int, code: str) -> None:
    assert_error(client.post("/v1/admin/reload", headers=headers), status, code)


def test_admin_reload_as_admin(client: TestClient, bundles: dict[str, Path]) -> None:
    technician = client.headers["Authorization"]
    try:
        sign_in(client, ADMIN)
        response = client.post("/v1/admin/reload")
    finally:
        client.headers["Authorization"] = technician
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["changes"]["chest"] == f"unchanged: {bundles['pneumonia']}"
    assert body["changes"]["wrist"].startswith("unavailable")
    assert [m["task"] for m in body["models"]] == ["chest"]


@pytest.mark.parametrize(
    ("path", "files"),
    [
        ("/v1/predict/chest", {"file": ("a.png", b"x", "image/png")}),
        ("/predict_chest", {"file": ("a.png", b"x", "image/png")}),
        ("/v1/predict/chest/batch", {"files": ("a.png", b"x", "image/png")}),
        ("/v1/predict/wrist", {"pa": ("a.png", b"x", "image/png")}),
        ("/predict_wrist", {"pa": ("a.png", b"x", "image/png")}),
    ],
)
def test_every_predict_endpoint_needs_a_login(client: TestClient, path: str, files: dict[str, tuple]) -> None:
    """No token: 401 before the upload is even looked at (the junk bytes would otherwise be a 400)."""
    assert_error(client.post(path, files=files, headers={"Authorization": ""}), 401, "unauthorized")
    assert_error(client.post(path, files=files, headers={"Authorization": "Bearer x.y.z"}), 401, "invalid_token")


def test_reload_swaps_a_changed_bundle_folder(bundles: dict[str, Path], data_dir: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(bundles["pneumonia"], tmp_path / "bundle")
    with TestClient(create_app(make_settings(data_dir, folder))) as test_client:
        sign_in(test_client, ADMIN)
        first = test_client.post("/v1/predict/chest", files={"file": ("a.png", png_bytes(), "image/png")})
        assert first.json()["decision"]["positive"] is True
        meta = load_meta(folder)
        save_meta(folder, meta.model_copy(update={"thresholds": {"abnormal": 0.99}}))  # a stricter operating point
        reload = test_client.post("/v1/admin/reload")
        assert reload.status_code == 200
        assert reload.json()["changes"]["chest"] == f"swapped {folder} -> {folder}"
        second = test_client.post("/v1/predict/chest", files={"file": ("a.png", png_bytes(), "image/png")})
        assert second.status_code == 200
        assert second.json()["decision"]["threshold"] == 0.99
        assert second.json()["decision"]["positive"] is False and second.json()["label"] == "normal"


# ------------------------------------------------------------------------------------- metrics, openapi


def test_metrics_after_traffic(client: TestClient) -> None:
    before = samples(client)
    assert client.post("/v1/predict/chest", files={"file": ("a.png", png_bytes(), "image/png")}).status_code == 200
    assert client.post("/v1/predict/chest", files={"file": ("e.png", b"", "image/png")}).status_code == 400
    assert client.post("/v1/predict/chest", files={"file": ("t.bin", b"nope" * 10, "image/png")}).status_code == 400
    tiny = io.BytesIO()
    Image.new("L", (16, 16)).save(tiny, format="PNG")
    assert client.post("/v1/predict/chest", files={"file": ("t.png", tiny.getvalue(), "image/png")}).status_code == 400
    after = samples(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("care_http_requests_total", endpoint="/v1/predict/chest", method="POST", status="200") == 1
    assert delta("care_http_requests_total", endpoint="/v1/predict/chest", method="POST", status="400") == 3
    assert delta("care_predictions_total", task="chest", label="pneumonia", decision="positive") == 1
    assert delta("care_prediction_confidence_count", task="chest", level="high") == 1
    assert delta("care_batch_size_count", task="chest") >= 1
    assert value(after, "care_batch_size_sum", task="chest") >= value(after, "care_batch_size_count", task="chest")
    for reason in ("empty", "not_an_image", "too_small"):
        assert delta("care_rejected_inputs_total", task="chest", reason=reason) == 1, reason
    assert delta("care_rejected_inputs_total", task="chest", reason="truncated") == 0
    assert ("care_queue_depth", frozenset({("task", "chest")})) in after
    assert value(after, "care_queue_depth", task="chest") == 0  # idle
    assert value(after, "care_model_loaded", task="chest") == 1
    assert value(after, "care_model_loaded", task="wrist") == 0
    info = [labels for (name, labels), v in after.items() if name == "care_model_info" and v == 1]
    assert len(info) == 1
    labels = dict(info[0])
    assert labels["task"] == "chest" and labels["name"] == "chest" and labels["backbone"] == "resnet18"
    assert labels["precision"] == "fp32" and labels["demo"] == "false"
    text = client.get("/metrics").text
    for name in (
        "care_http_requests_total",
        "care_http_request_seconds_bucket",
        "care_predictions_total",
        "care_prediction_confidence",
        "care_batch_size",
        "care_queue_depth",
        "care_rejected_inputs_total",
        "care_model_info",
    ):
        assert name in text, name


def test_unknown_paths_are_counted_as_unmatched(client: TestClient) -> None:
    before = samples(client)
    client.get("/no/such/path/12345")
    after = samples(client)
    labels = {"endpoint": "unmatched", "method": "GET", "status": "404"}
    assert value(after, "care_http_requests_total", **labels) - value(before, "care_http_requests_total", **labels) == 1
    assert not any("12345" in dict(lbl).get("endpoint", "") for _, lbl in after)  # no label per random path


def test_openapi_lists_every_path(client: TestClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    assert set(spec["paths"]) == ALL_PATHS
    assert spec["paths"]["/predict_chest"]["post"].get("deprecated") is True
    assert "radiologist" in spec["info"]["description"]


# --------------------------------------------------------------------------------------- request errors


def test_json_body_is_415(client: TestClient) -> None:
    body = assert_error(client.post("/v1/predict/chest", json={"image": "aGVsbG8="}), 415, "unsupported_media_type")
    assert "multipart/form-data" in body["detail"]


def test_raw_image_body_without_multipart_is_415(client: TestClient) -> None:
    response = client.post("/v1/predict/chest", content=png_bytes(), headers={"Content-Type": "image/png"})
    assert_error(response, 415, "unsupported_media_type")


def test_missing_file_field_is_422(client: TestClient) -> None:
    response = client.post("/v1/predict/chest", files={"image": ("a.png", png_bytes(), "image/png")})
    body = assert_error(response, 422, "invalid_request")
    assert "file" in body["detail"]


def test_text_part_is_415(client: TestClient) -> None:
    response = client.post("/v1/predict/chest", files={"file": ("notes.txt", b"hello", "text/plain")})
    body = assert_error(response, 415, "unsupported_media_type")
    assert "text/plain" in body["detail"]


def test_declared_content_length_over_the_limit_is_413(client: TestClient) -> None:
    big = b"\0" * (MAX_UPLOAD + 1)
    response = client.post("/v1/predict/chest", files={"file": ("big.png", big, "image/png")})
    body = assert_error(response, 413, "payload_too_large")
    assert str(MAX_UPLOAD) in body["detail"]
    assert response.headers["x-request-id"]
    # the batch endpoint has its own, larger limit
    batch = client.post("/v1/predict/chest/batch", files=[("files", ("big.png", big, "image/png"))])
    assert batch.status_code == 200 and batch.json()["items"][0]["error"]["error"] == "not_an_image"


@pytest.mark.parametrize("declared", ["abc", "-1", "1e9"])
def test_invalid_content_length_is_400(client: TestClient, declared: str) -> None:
    headers = {"Content-Length": declared, "Content-Type": "multipart/form-data; boundary=a"}
    body = assert_error(client.post("/v1/predict/chest", content=b"x", headers=headers), 400, "bad_request")
    assert declared in body["detail"]


def test_streamed_body_over_the_limit_is_413(client: TestClient) -> None:
    head, content_type = multipart("file", "stream.png", b"")
    head = head[: head.index(b"\r\n--care-test-boundary--")]

    def chunks() -> Iterator[bytes]:
        yield head
        for _ in range(2 * MAX_UPLOAD // 10_000):
            yield b"\x01" * 10_000

    response = client.post("/v1/predict/chest", content=chunks(), headers={"Content-Type": content_type})
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert_error(response, 413, "payload_too_large")
    assert client.get("/health").status_code == 200


def test_streamed_body_under_the_limit_is_served(client: TestClient) -> None:
    body, content_type = multipart("file", "stream.png", png_bytes())

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    response = client.post("/v1/predict/chest", content=chunks(), headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text
    assert response.json()["label"] == "pneumonia"


@pytest.mark.parametrize(
    ("content_type", "status", "code"),
    [
        ("multipart/form-data", 400, "bad_request"),  # no boundary
        ("multipart/form-data; boundary=zzz", 400, "bad_request"),  # body is not multipart
    ],
)
def test_broken_multipart_is_a_4xx_json_error(client: TestClient, content_type: str, status: int, code: str) -> None:
    response = client.post("/v1/predict/chest", content=b"garbage body", headers={"Content-Type": content_type})
    assert_error(response, status, code)


def test_unknown_path_and_wrong_method_are_json(client: TestClient) -> None:
    assert_error(client.get("/v1/no-such-thing"), 404, "not_found")
    assert_error(client.post("/predict"), 404, "not_found")
    assert_error(client.get("/v1/predict/chest"), 405, "method_not_allowed")


def test_error_bodies_are_valid_json_without_extra_keys(client: TestClient) -> None:
    response = client.post("/v1/predict/chest", files={"file": ("e.png", b"", "image/png")})
    assert json.loads(response.content) == {"error": "empty", "detail": "e.png: the file is empty (0 bytes)"}


# ------------------------------------------------------------------------------------------ metric bugs


def test_content_length_413_is_counted_under_its_endpoint(client: TestClient) -> None:
    before = samples(client)
    big = b"\0" * (MAX_UPLOAD + 1)
    assert client.post("/v1/predict/chest", files={"file": ("big.png", big, "image/png")}).status_code == 413
    after = samples(client)
    labels = {"endpoint": "/v1/predict/chest", "method": "POST", "status": "413"}
    assert value(after, "care_http_requests_total", **labels) - value(before, "care_http_requests_total", **labels) == 1
    key = {"task": "chest", "reason": "payload_too_large"}
    assert value(after, "care_rejected_inputs_total", **key) - value(before, "care_rejected_inputs_total", **key) == 1


def test_too_many_images_is_not_counted_as_payload_too_large(client: TestClient) -> None:
    before = samples(client)
    files = [("files", (f"{i}.png", b"x", "image/png")) for i in range(BATCH_MAX + 1)]
    assert client.post("/v1/predict/chest/batch", files=files).status_code == 413
    after = samples(client)
    key = {"task": "chest", "reason": "payload_too_large"}
    assert value(after, "care_rejected_inputs_total", **key) == value(before, "care_rejected_inputs_total", **key)


def test_every_answer_carries_security_headers_and_pages_a_strict_csp(client: TestClient) -> None:
    """Pages load only this origin's scripts and styles and may not be framed; /docs (CDN assets) has no CSP."""
    for path in ("/dashboard", "/health", "/v1/tasks"):
        response = client.get(path)
        assert response.headers["x-frame-options"] == "DENY", path
        assert response.headers["referrer-policy"] == "no-referrer" and response.headers["x-content-type-options"]
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert "content-security-policy" not in client.get("/docs").headers
