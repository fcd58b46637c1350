"""Hostile and unusual uploads through the service: every bad file is a 4xx JSON error, never a 500.

Colour PNGs, CMYK JPEGs and every DICOM flavour we support are accepted (converted to gray); after each
request the service still answers ``/health``.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import shared_path
from tests.helpers import dicom_bytes, service_client

if TYPE_CHECKING:  # starlette's TestClient answers with httpx2 responses
    from httpx2 import Response

MAX_PIXELS = 1_000_000


# ----------------------------------------------------------------------------------------------- builders


def _noise(height: int = 160, width: int = 140, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((height, width)) * 255).astype(np.uint8)


def _encode(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def _png(array: np.ndarray | None = None) -> bytes:
    return _encode(Image.fromarray(_noise() if array is None else array))


def _jpeg(array: np.ndarray | None = None) -> bytes:
    return _encode(Image.fromarray(_noise() if array is None else array), "JPEG", quality=90)


def _colour(mode: str) -> Image.Image:
    rgb = np.stack([_noise(seed=1), _noise(seed=2), _noise(seed=3)], axis=-1)
    return Image.fromarray(rgb, "RGB").convert(mode)


def _ramp16(high: int, dtype: type = np.uint16, low: int = 0) -> np.ndarray:
    return np.tile(np.linspace(low, high, 140), (160, 1)).round().astype(dtype)


_dicom = dicom_bytes


def _dicom_private_syntax() -> bytes:
    """A DICOM whose transfer syntax no decoder knows."""
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID

    ds = pydicom.dcmread(io.BytesIO(_dicom(_ramp16(4095))))
    ds.file_meta.TransferSyntaxUID = UID("1.2.826.0.1.3680043.9.9999.1")
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return buf.getvalue()


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The service with a constant-pneumonia bundle and a 1-megapixel decompression-bomb limit."""
    with service_client(tmp_path_factory.mktemp("bad-inputs"), max_image_pixels=MAX_PIXELS) as test_client:
        yield test_client


def post(
    client: TestClient, data: bytes, name: str = "upload", content_type: str = "application/octet-stream"
) -> Response:
    return client.post("/v1/predict/chest", files={"file": (name, data, content_type)})


def assert_refused(client: TestClient, data: bytes, status: int, code: str, name: str = "upload") -> str:
    """The upload gets this 4xx JSON error and the service stays up; returns the detail."""
    response = post(client, data, name)
    assert response.status_code == status, (name, response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    assert body["error"] == code, (name, body)
    assert client.get("/health").status_code == 200
    return body["detail"]


def assert_accepted(client: TestClient, data: bytes, name: str = "upload") -> None:
    response = post(client, data, name)
    assert response.status_code == 200, (name, response.text)
    assert response.json()["label"] == "pneumonia"
    assert client.get("/health").status_code == 200


# ------------------------------------------------------------------------------------------------- tests


def test_real_truncated_jpegs(client: TestClient) -> None:
    folder = shared_path("bad-inputs")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    assert files, f"{folder} is empty"
    outcomes: dict[str, tuple[int, str]] = {}
    for path in files:
        response = post(client, path.read_bytes(), path.name, "image/jpeg")
        body = response.json()
        assert set(body) == {"error", "detail"}, (path.name, body)
        outcomes[path.name] = (response.status_code, body["error"])
        assert path.name in body["detail"]
    assert {outcome for outcome in outcomes.values()} == {(400, "truncated")}, outcomes
    assert client.get("/health").status_code == 200


INVALID: dict[str, tuple[Callable[[], bytes], int, str]] = {
    "png cut in half": (lambda: _half(_png()), 400, "truncated"),
    "jpeg cut in half": (lambda: _half(_jpeg()), 400, "truncated"),
    "png without its end": (lambda: _png()[:-12], 400, "truncated"),
    "png header only": (lambda: _png()[:40], 400, "truncated"),
    "decompression bomb png": (lambda: _png(np.zeros((2000, 2000), np.uint8)), 400, "decompression_bomb"),
    "decompression bomb jpeg": (lambda: _jpeg(np.zeros((1200, 1000), np.uint8)), 400, "decompression_bomb"),
    "tiny 16x16": (lambda: _png(_noise(16, 16)), 400, "too_small"),
    "thin 500x20": (lambda: _png(_noise(20, 500)), 400, "too_small"),
    "empty": (lambda: b"", 400, "empty"),
    "random text": (lambda: b"Patient: Jane Doe\nFindings: none\n" * 20, 400, "not_an_image"),
    "html": (lambda: b"<!doctype html><html><body>not an x-ray</body></html>", 400, "not_an_image"),
    "one byte": (lambda: b"\x89", 400, "not_an_image"),
    "png magic only": (lambda: b"\x89PNG\r\n\x1a\n", 400, "truncated"),
    "jpeg magic only": (lambda: b"\xff\xd8\xff", 400, "truncated"),
    "dicom without pixel data": (lambda: _dicom(None), 400, "no_pixel_data"),
    "dicom cut in half": (lambda: _half(_dicom(_ramp16(4095), bits_stored=12)), 400, "truncated"),
    "dicom preamble only": (lambda: _dicom(_ramp16(4095))[:132], 400, "truncated"),
    "dicom 10x10": (lambda: _dicom(np.zeros((10, 10), np.uint16)), 400, "too_small"),
    "dicom bomb": (lambda: _dicom(_ramp16(4095), Rows=20000, Columns=20000), 400, "decompression_bomb"),
    "dicom unknown transfer syntax": (_dicom_private_syntax, 415, "unsupported"),
}


@pytest.mark.parametrize("case", list(INVALID), ids=list(INVALID))
def test_invalid_upload_is_a_4xx_json_error(client: TestClient, case: str) -> None:
    build, status, code = INVALID[case]
    detail = assert_refused(client, build(), status, code, name=f"{case}.bin")
    assert f"{case}.bin" in detail  # the message names the file


def test_bomb_detail_gives_the_limit(client: TestClient) -> None:
    detail = assert_refused(client, _png(np.zeros((2000, 2000), np.uint8)), 400, "decompression_bomb")
    assert "2000x2000" in detail and str(MAX_PIXELS) in detail


VALID: dict[str, Callable[[], bytes]] = {
    "gray png": _png,
    "gray jpeg": _jpeg,
    "rgb png": lambda: _encode(_colour("RGB")),
    "rgba png": lambda: _encode(_colour("RGBA")),
    "palette png": lambda: _encode(_colour("P")),
    "16-bit png": lambda: _encode(Image.fromarray(_ramp16(60000))),
    "cmyk jpeg": lambda: _encode(_colour("CMYK"), "JPEG", quality=90),
    "rgb jpeg": lambda: _encode(_colour("RGB"), "JPEG", quality=90),
    "bmp": lambda: _encode(Image.fromarray(_noise()), "BMP"),
    "just under the pixel limit": lambda: _png(np.zeros((1000, 1000), np.uint8)),
    "dicom monochrome2 12-bit": lambda: _dicom(_ramp16(4095), bits_stored=12),
    "dicom monochrome2 16-bit": lambda: _dicom(_ramp16(65535), bits_stored=16),
    "dicom monochrome1": lambda: _dicom(_ramp16(4095), photometric="MONOCHROME1", bits_stored=12),
    "dicom signed 16-bit": lambda: _dicom(_ramp16(3000, np.int16, low=-1000), bits_stored=16),
    "dicom signed 12-bit": lambda: _dicom(_ramp16(2000, np.int16, low=-2000), bits_stored=12),
    "dicom rgb": lambda: _dicom(np.stack([_noise(seed=i) for i in range(3)], -1), photometric="RGB", bits_stored=8),
    "dicom windowed": lambda: _dicom(_ramp16(4095), bits_stored=12, WindowCenter=2048, WindowWidth=1024),
    "dicom without preamble": lambda: _dicom(_ramp16(4095), bits_stored=12, preamble=False),
}


@pytest.mark.parametrize("case", list(VALID), ids=list(VALID))
def test_valid_upload_is_accepted(client: TestClient, case: str) -> None:
    assert_accepted(client, VALID[case](), name=case)


def test_signed_dicom_is_marked_signed() -> None:
    """The signed cases above really are signed DICOMs (PixelRepresentation 1), not unsigned ones."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(VALID["dicom signed 16-bit"]()))
    assert ds.PixelRepresentation == 1 and ds.BitsStored == 16
    ds = pydicom.dcmread(io.BytesIO(VALID["dicom monochrome1"]()))
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.BitsStored == 12


def test_service_keeps_serving_after_all_of_it(client: TestClient) -> None:
    for build, _, _ in INVALID.values():
        assert 400 <= post(client, build()).status_code < 500
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 200
    assert_accepted(client, _png())
