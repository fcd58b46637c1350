"""Wrist studies through the service: PA and lateral uploads, a missing view flagged, both images kept with the
study, bad views refused by name; the service's answer equals the bundle's own engine on the same images."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from care_companion.imaging.decode import decode_image
from care_companion.models.predictor import BundlePredictor
from care_companion.tasks import WRIST
from tests.conftest import write_bundle
from tests.helpers import RESULT_KEYS, service_client

FRACTURE_LOGITS = [0.0, 2.0]


def png(seed: int, size: int = 96) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = (rng.random((size, size)) * 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def files(**views: bytes) -> dict[str, tuple[str, bytes, str]]:
    return {view: (f"{view}.png", data, "image/png") for view, data in views.items()}


@pytest.fixture(scope="module")
def wrist_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random (not constant) two-view model, so the answer depends on the images."""
    return write_bundle(tmp_path_factory.mktemp("wrist") / "bundle", task=WRIST, backbone="test_resnet")


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, wrist_bundle: Path) -> Iterator[TestClient]:
    with service_client(
        tmp_path_factory.mktemp("wrist-service"), wrist_model=str(wrist_bundle), orphan_sweep_seconds=0
    ) as client:
        yield client


def test_two_views_give_a_calibrated_result_equal_to_the_engines(client: TestClient, wrist_bundle: Path) -> None:
    pa, lateral = png(1), png(2)
    response = client.post("/v1/predict/wrist", files=files(pa=pa, lateral=lateral))
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(RESULT_KEYS) <= set(body)
    assert body["task"] == "wrist" and body["views_used"] == ["pa", "lateral"]
    assert set(body["probabilities"]) == set(WRIST.classes) and body["review_required"] is True
    assert not any("missing" in reason for reason in body["confidence_reasons"])
    engine = BundlePredictor(wrist_bundle)
    study = {"pa": decode_image(pa, name="pa"), "lateral": decode_image(lateral, name="lateral")}
    expected = engine.predict_studies([study])[0]
    assert body["probabilities"]["fracture"] == pytest.approx(float(expected[1]), abs=1e-4)


@pytest.mark.parametrize(("sent", "missing"), [("lateral", "pa"), ("pa", "lateral")])
def test_one_view_is_read_and_flagged_low_confidence(client: TestClient, sent: str, missing: str) -> None:
    response = client.post("/predict_wrist", files=files(**{sent: png(3)}))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["views_used"] == [sent] and body["confidence"] == "low"
    assert any(f"{missing} view is missing" in reason for reason in body["confidence_reasons"])


def test_no_view_and_bad_views_are_clear_4xx(client: TestClient) -> None:
    none = client.post("/v1/predict/wrist", data={"study_id": ""})
    assert none.status_code == 422 and none.json()["error"] in {"no_images", "invalid_request"}
    empty = client.post("/v1/predict/wrist", files={"pa": ("pa.png", b"", "image/png")})
    assert empty.status_code == 422 or empty.status_code == 400
    broken = client.post(
        "/v1/predict/wrist",
        files={"pa": ("wrist-pa.png", b"not an image", "image/png"), "lateral": ("l.png", png(4), "image/png")},
    )
    assert broken.status_code == 400 and "wrist-pa.png" in broken.json()["detail"]
    text = client.post("/v1/predict/wrist", files={"lateral": ("notes.txt", b"hello", "text/plain")})
    assert text.status_code == 415


def _study(client: TestClient, task: str) -> int:
    patient = client.post("/v1/patients", json={"mrn": f"MRN-W-{task}", "name": "Wren Wrist"})
    assert patient.status_code == 201, patient.text
    study = client.post("/v1/studies", json={"patient_id": patient.json()["id"], "task": task})
    assert study.status_code == 201, study.text
    return int(study.json()["id"])


def test_a_study_keeps_both_views_and_the_result(client: TestClient) -> None:
    study_id = _study(client, "wrist")
    response = client.post(
        "/v1/predict/wrist", files=files(pa=png(5), lateral=png(6)), data={"study_id": str(study_id)}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["study_id"] == study_id and body["prediction_id"] and body["image_id"]
    images = client.get(f"/v1/studies/{study_id}/images").json()
    assert sorted(image["view"] for image in images) == ["lateral", "pa"]
    store: Any = client.app.state.store  # type: ignore[attr-defined]
    assert all(store.exists(image["object_key"]) for image in images)
    predictions = client.get(f"/v1/studies/{study_id}/predictions").json()["data"]
    assert [p["id"] for p in predictions] == [body["prediction_id"]]


def test_a_chest_study_is_not_a_wrist_study(client: TestClient) -> None:
    study_id = _study(client, "chest")
    response = client.post("/v1/predict/wrist", files=files(pa=png(7)), data={"study_id": str(study_id)})
    assert response.status_code == 422 and response.json()["error"] == "wrong_task"
