"""STOW-RS: DICOM instances pushed over HTTP are routed and predicted on per study as C-STORE studies are, under
the login rules; what no task reads (another body part, no pixels, not DICOM) is in the Failed SOP Sequence."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from tests.helpers import clinic, dicom_film

USERS = (("tech", "technician", "er"),)
BOUNDARY = "care-boundary-7"


def film(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((96, 96)) * 255).astype(np.uint8)


def encoded(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def related(parts: list[bytes]) -> tuple[bytes, str]:
    body = b"".join(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in parts)
    return body + f"--{BOUNDARY}--\r\n".encode(), f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with clinic(tmp_path, USERS) as (client, tokens):
        yield {"client": client, "tokens": tokens}


def post(world: dict[str, Any], parts: list[bytes], user: str = "tech", content_type: str | None = None) -> Any:
    body, declared = related(parts)
    headers = {"Content-Type": content_type or declared, "Authorization": f"Bearer {world['tokens'][user]}"}
    return world["client"].post("/dicomweb/studies", content=body, headers=headers)


def sop_uids(response: dict[str, Any], tag: str) -> list[str]:
    return [item["00081155"]["Value"][0] for item in response.get(tag, {}).get("Value", [])]


def test_each_study_is_predicted_on_and_refusals_are_listed(world: dict[str, Any]) -> None:
    study = pydicom.uid.generate_uid()
    chest = dicom_film(film(1), body_part="CHEST", patient="S-1")
    pa = dicom_film(film(2), body_part="WRIST", view="PA", patient="S-1", study=study)
    lateral = dicom_film(film(3), body_part="WRIST", view="LL", patient="S-1", study=study)
    knee = dicom_film(film(4), body_part="KNEE", patient="S-1")
    response = post(world, [encoded(chest), encoded(pa), encoded(lateral), encoded(knee), b"not dicom at all"])
    assert response.status_code == 202 and response.headers["content-type"].startswith("application/dicom+json")
    body = response.json()
    assert sorted(sop_uids(body, "00081199")) == sorted(
        [chest.SOPInstanceUID, pa.SOPInstanceUID, lateral.SOPInstanceUID]
    )
    failed = body["00081198"]["Value"]
    assert len(failed) == 2 and knee.SOPInstanceUID in sop_uids(body, "00081198")
    assert all(item["00081197"]["Value"] == [0xC000] for item in failed)
    headers = {"Authorization": f"Bearer {world['tokens']['tech']}"}
    client = world["client"]
    patients = client.get("/v1/patients", params={"q": "S-1"}, headers=headers).json()["data"]
    assert [p["mrn"] for p in patients] == ["S-1"]
    studies = client.get("/v1/studies", params={"patient_id": patients[0]["id"]}, headers=headers).json()["data"]
    assert sorted(s["task"] for s in studies) == ["chest", "wrist"]
    wrist_study = next(s for s in studies if s["task"] == "wrist")
    images = client.get(f"/v1/studies/{wrist_study['id']}/images", headers=headers).json()
    assert sorted(i["view"] for i in images) == ["lateral", "pa"]


def test_login_and_media_type_rules(world: dict[str, Any]) -> None:
    chest = encoded(dicom_film(film(5)))
    assert post(world, [chest], content_type="multipart/form-data; boundary=x").status_code == 415
    unsigned = world["client"].post("/dicomweb/studies", content=related([chest])[0])
    assert unsigned.status_code == 401
    nothing = post(world, [encoded(dicom_film(film(6), body_part="KNEE"))])  # no task reads it
    assert nothing.status_code == 409 and "00081199" not in nothing.json()
