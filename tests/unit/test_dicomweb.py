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


def test_results_of_a_pushed_study_are_retrievable_over_wado_rs(tmp_path: Path) -> None:
    """After STOW-RS, GET /dicomweb/studies/{uid} gives the study's SR and heat-map Secondary Capture, the same
    instances on every request; after a radiologist's verdict the SR is a new, verified instance naming the first as
    its predecessor; one instance by its UIDs; another department's user, an unknown or malformed UID get nothing."""
    from care_companion.interop.dicomweb import split_related

    users = (("tech", "technician", "er"), ("rad", "radiologist", "er"), ("other", "technician", "icu"))
    with clinic(tmp_path, users) as (client, tokens):
        world = {"client": client, "tokens": tokens}
        chest = dicom_film(film(7), body_part="CHEST", patient="S-2")
        assert post(world, [encoded(chest)]).status_code == 200

        def retrieve(path: str, user: str = "tech") -> Any:
            return client.get(f"/dicomweb/studies/{path}", headers={"Authorization": f"Bearer {tokens[user]}"})

        def instances(answer: Any) -> list[pydicom.Dataset]:
            assert answer.status_code == 200, answer.text
            parts = split_related(answer.headers["content-type"], answer.content)
            return [pydicom.dcmread(io.BytesIO(part)) for part in parts]

        first = instances(retrieve(chest.StudyInstanceUID))
        assert sorted(ds.Modality for ds in first) == ["OT", "SR"]  # the report and one heat map (one view)
        sr = next(ds for ds in first if ds.Modality == "SR")
        assert sr.StudyInstanceUID == chest.StudyInstanceUID and sr.PatientID == "S-2"
        assert sr.VerificationFlag == "UNVERIFIED"
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == chest.SOPInstanceUID
        again = instances(retrieve(chest.StudyInstanceUID))
        assert sorted(ds.SOPInstanceUID for ds in again) == sorted(ds.SOPInstanceUID for ds in first)  # stable

        study_id = client.get(
            "/v1/studies", params={"q": ""}, headers={"Authorization": f"Bearer {tokens['tech']}"}
        ).json()["data"][0]["id"]
        verdict = client.post(
            f"/v1/studies/{study_id}/feedback",
            json={"true_label": "normal"},
            headers={"Authorization": f"Bearer {tokens['rad']}"},
        )
        assert verdict.status_code == 201, verdict.text
        after = instances(retrieve(chest.StudyInstanceUID))
        verified = next(ds for ds in after if ds.Modality == "SR")
        assert verified.VerificationFlag == "VERIFIED" and verified.SOPInstanceUID != sr.SOPInstanceUID
        predecessor = verified.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
        assert predecessor.ReferencedSOPInstanceUID == sr.SOPInstanceUID
        capture = next(ds for ds in after if ds.Modality == "OT")
        assert capture.SOPInstanceUID == next(ds for ds in first if ds.Modality == "OT").SOPInstanceUID

        one = instances(
            retrieve(f"{chest.StudyInstanceUID}/series/{capture.SeriesInstanceUID}/instances/{capture.SOPInstanceUID}")
        )
        assert [ds.SOPInstanceUID for ds in one] == [capture.SOPInstanceUID]
        assert retrieve(f"{chest.StudyInstanceUID}/series/1.2/instances/1.3").status_code == 404
        series = retrieve(f"{chest.StudyInstanceUID}/series")  # QIDO-RS, as a PACS asks before retrieving
        assert series.headers["content-type"].startswith("application/dicom+json")
        found = {m["0020000E"]["Value"][0]: m for m in series.json()}
        assert set(found) == {ds.SeriesInstanceUID for ds in after}
        assert found[capture.SeriesInstanceUID]["00080060"]["Value"] == ["OT"]
        assert found[capture.SeriesInstanceUID]["00201209"]["Value"] == [1]
        listed = retrieve(f"{chest.StudyInstanceUID}/series/{verified.SeriesInstanceUID}/instances").json()
        assert [m["00080018"]["Value"][0] for m in listed] == [verified.SOPInstanceUID]
        whole = instances(retrieve(f"{chest.StudyInstanceUID}/series/{verified.SeriesInstanceUID}"))
        assert [ds.SOPInstanceUID for ds in whole] == [verified.SOPInstanceUID]
        assert retrieve(chest.StudyInstanceUID, user="other").status_code == 404  # another department's study
        assert retrieve("1.2.3.4").status_code == 404
        assert retrieve("not-a-uid").status_code == 422
        assert client.get(f"/dicomweb/studies/{chest.StudyInstanceUID}").status_code == 401
