"""Property-based fuzzing of the upload endpoints: 1,800 malformed requests, never a 5xx.

Random bytes, truncated and bit-flipped PNG/JPEG/DICOM files, random multipart part names and content types,
and random raw bodies with random Content-Type headers all go through one TestClient. Every non-200 answer
must be a 4xx JSON ``{"error", "detail"}``; a 200 (a mutation that still decodes) must be a full result.
"""

from __future__ import annotations

import io
import string
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import RESULT_KEYS, service_client

if TYPE_CHECKING:  # starlette's TestClient answers with httpx2 responses
    from httpx2 import Response

CLASSES = ["normal", "pneumonia", "tuberculosis", "unknown"]
SINGLE = ["/v1/predict/chest", "/predict_chest"]
BATCH = "/v1/predict/chest/batch"
FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
COUNTS = {"random": 300, "truncated": 400, "flipped": 500, "multipart": 300, "raw": 300}
assert sum(COUNTS.values()) >= 1000


# ------------------------------------------------------------------------------------------------ seeds


def _seed_png() -> bytes:
    pixels = (np.random.default_rng(0).random((72, 80)) * 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _seed_jpeg() -> bytes:
    pixels = np.tile(np.linspace(0, 255, 80), (72, 1)).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=80)
    return out.getvalue()


def _seed_dicom() -> bytes:
    from pydicom.dataset import Dataset
    from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.set_pixel_data(
        np.tile(np.linspace(0, 4095, 70), (66, 1)).astype(np.uint16),
        photometric_interpretation="MONOCHROME2",
        bits_stored=12,
    )
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.preamble = b"\0" * 128
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return buf.getvalue()


SEEDS = {"png": _seed_png(), "jpeg": _seed_jpeg(), "dicom": _seed_dicom()}
MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"\0" * 128 + b"DICM", b"\x08\x00\x05\x00CS", b"GIF89a"]

# ------------------------------------------------------------------------------------------- strategies

header_text = st.text(alphabet=string.ascii_letters + string.digits + " /;=-_.+*\"',:", max_size=60)
mime = st.one_of(
    st.sampled_from(
        [
            "image/png",
            "image/jpeg",
            "application/dicom",
            "application/octet-stream",
            "text/plain",
            "application/json",
            "image/",
            "",
            "IMAGE/PNG; charset=utf-8",
            "multipart/mixed",
        ]
    ),
    header_text,
)
random_bytes = st.builds(lambda magic, tail: magic + tail, st.sampled_from(MAGIC), st.binary(max_size=2048))
seed = st.sampled_from(sorted(SEEDS))


@st.composite
def truncated(draw: st.DrawFn) -> bytes:
    data = SEEDS[draw(seed)]
    return data[: draw(st.integers(0, len(data) - 1))]


@st.composite
def flipped(draw: st.DrawFn) -> bytes:
    data = bytearray(SEEDS[draw(seed)])
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    return bytes(data)


any_payload = st.one_of(random_bytes, truncated(), flipped(), st.sampled_from(list(SEEDS.values())))


# ----------------------------------------------------------------------------------------------- checks


def check(response: Response, *, batch: bool = False) -> None:
    """Never a 5xx; errors are the one JSON body; a 200 is a full, consistent result."""
    status = response.status_code
    assert status < 500, (status, response.text)
    if status != 200:
        assert 400 <= status < 500, (status, response.text)
        assert response.headers.get("content-type", "").startswith("application/json"), response.headers
        body = response.json()
        assert set(body) == {"error", "detail"}, body
        assert isinstance(body["error"], str) and body["error"]
        assert isinstance(body["detail"], str) and body["detail"]
        return
    body = response.json()
    if batch:
        assert body["count"] == len(body["items"]) and body["succeeded"] == sum(i["ok"] for i in body["items"])
        for index, item in enumerate(body["items"]):
            assert item["index"] == index
            if item["ok"]:
                check_result(item["result"])
            else:
                assert item["result"] is None and set(item["error"]) == {"error", "detail"}
        return
    check_result(body)


def fuzz_check(response: Response, *, batch: bool = False) -> None:
    """:func:`check`, recording the outcome for ``--hypothesis-show-statistics``."""
    check(response, batch=batch)
    event(f"{response.status_code} {response.json().get('error', 'ok')}")


def check_result(body: dict) -> None:
    assert set(body) == RESULT_KEYS
    assert body["label"] in CLASSES and body["label"] != "unknown"
    assert list(body["probabilities"]) == CLASSES
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert body["decision"]["positive"] == (body["label"] in ("pneumonia", "tuberculosis"))
    assert body["review_required"] is True and body["confidence"] in ("high", "low")


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """One service for the whole module; its model answers pneumonia for any image that decodes."""
    with service_client(
        tmp_path_factory.mktemp("fuzz"), raise_server_exceptions=False, max_upload_bytes=64 * 1024, batch_max_images=4
    ) as test_client:
        yield test_client


def test_seeds_are_valid_images(client: TestClient) -> None:
    """The mutation seeds decode, so truncations and flips start from real files."""
    for name, data in SEEDS.items():
        response = client.post("/v1/predict/chest", files={"file": (name, data, "application/octet-stream")})
        assert response.status_code == 200, (name, response.text)
        check(response)


# -------------------------------------------------------------------------------------------- the fuzzing


@settings(FUZZ, max_examples=COUNTS["random"])
@given(data=random_bytes, path=st.sampled_from(SINGLE))
def test_random_bytes(client: TestClient, data: bytes, path: str) -> None:
    response = client.post(path, files={"file": ("random.bin", data, "application/octet-stream")})
    fuzz_check(response)


@settings(FUZZ, max_examples=COUNTS["truncated"])
@given(data=truncated(), path=st.sampled_from(SINGLE))
def test_truncated_files(client: TestClient, data: bytes, path: str) -> None:
    response = client.post(path, files={"file": ("cut", data, "application/octet-stream")})
    fuzz_check(response)
    if not data:
        assert response.json()["error"] == "empty"


@settings(FUZZ, max_examples=COUNTS["flipped"])
@given(data=flipped(), path=st.sampled_from([*SINGLE, BATCH]))
def test_flipped_bytes(client: TestClient, data: bytes, path: str) -> None:
    field = "files" if path == BATCH else "file"
    response = client.post(path, files=[(field, ("flipped", data, "image/png"))])
    fuzz_check(response, batch=path == BATCH)


@settings(FUZZ, max_examples=COUNTS["multipart"])
@given(
    parts=st.lists(
        st.tuples(
            st.one_of(
                st.just("file"), st.just("files"), st.sampled_from(["File", "pa", "", "file[]"]), st.text(max_size=12)
            ),
            st.one_of(st.none(), st.text(max_size=20)),
            mime,
            any_payload,
        ),
        min_size=0,
        max_size=5,
    ),
    path=st.sampled_from([*SINGLE, BATCH]),
)
def test_random_multipart_parts(client: TestClient, parts: list[tuple[str, str | None, str, bytes]], path: str) -> None:
    if parts:
        files = [(name, (filename, data, content_type)) for name, filename, content_type, data in parts]
        response = client.post(path, files=files)
    else:
        response = client.post(path, files={}, data={"note": "no files"})
    fuzz_check(response, batch=path == BATCH)


@settings(FUZZ, max_examples=COUNTS["raw"])
@given(
    body=st.one_of(st.binary(max_size=1024), any_payload),
    content_type=st.one_of(
        mime,
        st.builds(lambda b: f"multipart/form-data; boundary={b}", header_text),
        st.just("multipart/form-data"),
        st.just("application/x-www-form-urlencoded"),
    ),
    path=st.sampled_from([*SINGLE, BATCH]),
)
def test_random_raw_bodies(client: TestClient, body: bytes, content_type: str, path: str) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post(path, content=body, headers=headers)
    fuzz_check(response, batch=path == BATCH)
    assert response.status_code != 200  # a raw body is never a well-formed upload with a 'file' part


# ---------------------------------------------------------------------------------------------- afterwards


def test_service_is_healthy_after_the_fuzzing(client: TestClient) -> None:
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 200
    response = client.post("/v1/predict/chest", files={"file": ("ok.png", SEEDS["png"], "image/png")})
    assert response.status_code == 200
    check(response)
    served = 0.0
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "care_http_requests_total":
                assert not sample.labels["status"].startswith("5"), sample  # no 5xx over the whole module
                served += sample.value
    assert served >= 1000
