"""The DICOM C-STORE receiver: a sender gets a clear status for every instance (kept, no pixel data, no task reads
it, too large), acknowledged instances are on disk before success is sent (a new receiver on the same spool
finds them), calling AE titles outside the allowed list are rejected, and a settled study goes through the
service as an upload would: patient registered from the DICOM header, one prediction per study, a missing view
flagged."""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from care_companion.interop.dicom_gateway import ServiceGateway, process_study
from care_companion.interop.dicom_inbox import Spool
from care_companion.interop.dicom_listener import NO_PIXEL_DATA, TOO_LARGE, UNROUTABLE, Receiver, start_listener
from care_companion.tasks import CHEST, WRIST
from tests.helpers import clinic, dicom_film, stand_in_pacs
from tests.processes import free_port

USERS = (("tech", "technician", "er"),)


def film(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((96, 96)) * 255).astype(np.uint8)


def send(port: int, instances: list[Dataset], calling: str = "MODALITY") -> list[int | None]:
    """C-STORE each instance; the status of each (None when the association was refused)."""
    from pynetdicom import AE, StoragePresentationContexts

    ae = AE(ae_title=calling)
    ae.requested_contexts = StoragePresentationContexts
    association = ae.associate("127.0.0.1", port, ae_title="CARECOMPANION")
    if not association.is_established:
        return [None] * len(instances)
    try:
        return [int(association.send_c_store(ds).Status) for ds in instances]
    finally:
        association.release()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[Receiver, int]]:
    spool = Spool(tmp_path / "spool")
    receiver = Receiver(spool=spool, tasks=[CHEST, WRIST], max_pixels=200 * 200)
    port = free_port()
    server = start_listener(
        receiver, port=port, ae_title="CARECOMPANION", allowed_calling=["MODALITY", "PACS"], max_associations=4
    )
    try:
        yield receiver, port
    finally:
        server.shutdown()


def test_every_instance_gets_a_clear_status_and_acknowledged_ones_are_on_disk(receiver: tuple[Receiver, int]) -> None:
    rec, port = receiver
    chest = dicom_film(film(1), body_part="CHEST", view="PA")
    knee = dicom_film(film(2), body_part="KNEE")
    report = dicom_film(film(3))
    del report.PixelData
    huge = dicom_film(film(4))
    huge.Rows, huge.Columns = 1000, 1000  # declared larger than the receiver's limit
    statuses = send(port, [chest, knee, report, huge])
    assert statuses == [0x0000, UNROUTABLE, NO_PIXEL_DATA, TOO_LARGE]
    assert rec.received == [chest.SOPInstanceUID]
    again = Spool(rec.spool.root)  # a receiver started after a crash finds what was acknowledged
    assert again.studies() == [chest.StudyInstanceUID]
    kept = pydicom.dcmread(again.instances(chest.StudyInstanceUID)[0])
    assert kept.SOPInstanceUID == chest.SOPInstanceUID and np.array_equal(kept.pixel_array, chest.pixel_array)
    assert [p.name for p in (rec.spool.unroutable).iterdir()] == [f"{knee.SOPInstanceUID}.dcm"]  # kept apart
    assert send(port, [chest], calling="STRANGER") == [None]  # not an allowed calling AE title


@pytest.fixture
def service(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with clinic(tmp_path, USERS) as (client, tokens):
        yield {"client": client, "gateway": ServiceGateway(client, tokens["tech"]), "token": tokens["tech"]}


def test_a_settled_study_goes_through_the_service_as_an_upload(
    receiver: tuple[Receiver, int], service: dict[str, Any]
) -> None:
    rec, port = receiver
    study = pydicom.uid.generate_uid()
    chest = dicom_film(film(5), body_part="CHEST", patient="P-100")
    wrist_pa = dicom_film(film(6), body_part="WRIST", view="PA", patient="P-100", study=study)
    assert send(port, [chest, wrist_pa]) == [0, 0]
    outcomes = {s: process_study(rec.spool, s, service["gateway"], [CHEST, WRIST]) for s in rec.spool.settled(0)}
    assert set(outcomes) == {chest.StudyInstanceUID, study} and rec.spool.studies() == []
    first = outcomes[chest.StudyInstanceUID]
    assert first.task == "chest" and first.status == 200 and first.answer["label"] == "pneumonia"
    second = outcomes[study]
    assert second.task == "wrist" and second.status == 200
    assert any("missing view(s) lateral" in p for p in second.problems)
    assert second.answer["views_used"] == ["pa"]
    headers = {"Authorization": f"Bearer {service['token']}"}
    patients = service["client"].get("/v1/patients", params={"q": "P-100"}, headers=headers).json()["data"]
    assert [(p["mrn"], p["name"], p["sex"]) for p in patients] == [("P-100", "Doe Jane", "F")]  # registered once
    studies = service["client"].get("/v1/studies", params={"patient_id": patients[0]["id"]}, headers=headers)
    assert sorted(s["task"] for s in studies.json()["data"]) == ["chest", "wrist"]  # one study each, stored
    images = service["client"].get(f"/v1/studies/{second.answer['study_id']}/images", headers=headers).json()
    assert [i["view"] for i in images] == ["pa"]


def test_a_study_waits_in_the_spool_while_the_service_is_down(receiver: tuple[Receiver, int]) -> None:
    import httpx

    from care_companion.interop.dicom_gateway import ServiceDown

    rec, port = receiver
    chest = dicom_film(film(7))
    assert send(port, [chest]) == [0]
    nobody = httpx.Client(base_url=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with nobody, pytest.raises(ServiceDown):
        process_study(rec.spool, chest.StudyInstanceUID, ServiceGateway(nobody, "key"), [CHEST, WRIST])
    assert rec.spool.studies() == [chest.StudyInstanceUID]  # still waiting, to be tried again


def test_listen_and_pull_without_their_settings_are_clear_errors(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from care_companion.cli.main import app
    from care_companion.config import get_settings

    result = CliRunner().invoke(app, ["dicom", "listen"])
    assert result.exit_code == 2 and "CARE_DICOM_API_KEY" in result.output
    result = CliRunner().invoke(app, ["dicom", "pull", "--study", "1.2.3"])
    assert result.exit_code == 2 and "CARE_DICOM_PACS_URL" in result.output
    monkeypatch.setenv("CARE_DICOM_PACS_URL", f"http://127.0.0.1:{free_port()}/dicom-web")
    monkeypatch.setenv("CARE_DICOM_API_KEY", "cc_test")
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["dicom", "pull", "--study", "1.2.3"])
    assert result.exit_code == 2 and "pacs_unavailable" in result.output and "cannot be reached" in result.output
    result = CliRunner().invoke(app, ["dicom", "pull", "--study", "../etc"])
    assert result.exit_code == 2 and "not a DICOM UID" in result.output


def test_results_wait_in_the_outbox_while_the_pacs_is_down(tmp_path: Path) -> None:
    """Results the PACS cannot take now are kept and sent on a later round, oldest first, none twice."""
    from care_companion.interop.dicom_results import Destination, Outbox, ResultsSink

    port = free_port()
    sink = ResultsSink(Outbox(tmp_path / "outbox"), Destination("PACS", "127.0.0.1", port), "CARECOMPANION")
    first, second = dicom_film(film(8)), dicom_film(film(9))
    assert sink.deliver([first, second]) == 0 and len(sink.outbox.pending()) == 2  # nobody listens yet
    with stand_in_pacs(port) as stored:
        assert sink.retry() == 2 and sink.outbox.pending() == []
    assert [ds.SOPInstanceUID for ds in stored] == [first.SOPInstanceUID, second.SOPInstanceUID]
    assert sink.retry() == 0


def test_each_verdict_sends_a_verified_report_that_supersedes_the_last(tmp_path: Path) -> None:
    """The receiver sends a study's SR to the PACS; once a radiologist corrects the result, it sends a new,
    verified SR naming the first as its predecessor, once; a later verdict that amends the finding sends a third
    SR superseding the second. The training copy of the received film carries no patient identifiers."""
    from care_companion.interop.dicom_gateway import follow_verdicts
    from care_companion.interop.dicom_results import Destination, Outbox, ResultsSink, SentReports

    pacs_port = free_port()
    spool = Spool(tmp_path / "spool")
    sink = ResultsSink(
        Outbox(spool.root / "outbox"),
        Destination("PACS", "127.0.0.1", pacs_port),
        "CARECOMPANION",
        SentReports(spool.root / "sent"),
    )
    chest = dicom_film(film(10), patient="V-1")
    spool.keep(chest)
    users = (("tech", "technician", "er"), ("rad", "radiologist", "er"))
    with stand_in_pacs(pacs_port) as stored, clinic(tmp_path, users) as (client, tokens):
        gateway = ServiceGateway(client, tokens["tech"])
        outcome = process_study(spool, chest.StudyInstanceUID, gateway, [CHEST, WRIST], sink)
        first = [ds for ds in stored if ds.Modality == "SR"]
        assert outcome.status == 200 and len(first) == 1 and first[0].VerificationFlag == "UNVERIFIED"
        assert follow_verdicts(spool, gateway, sink) == 0  # no verdict yet

        def verdict(label: str) -> None:
            answer = client.post(
                f"/v1/studies/{outcome.answer['study_id']}/feedback",
                json={"true_label": label},
                headers={"Authorization": f"Bearer {tokens['rad']}"},
            )
            assert answer.status_code == 201, answer.text

        verdict("normal")
        assert follow_verdicts(spool, gateway, sink) == 1
        assert follow_verdicts(spool, gateway, sink) == 0  # once
        verdict("tuberculosis")  # a second radiologist's reading amends the first
        assert follow_verdicts(spool, gateway, sink) == 1
        assert follow_verdicts(spool, gateway, sink) == 0
        assert sink.sent is not None and [r.status for r in sink.sent.followed(1)] == ["amended"]
        app: Any = client.app
        store = app.state.store
        copies = [key for key in store.list("feedback/") if key.endswith(".dcm")]
        assert copies, "the received film was not copied for training"
        for key in copies:
            copy = pydicom.dcmread(io.BytesIO(store.get_bytes(key)))
            assert copy.PatientIdentityRemoved == "YES"
            assert "Doe" not in str(copy.PatientName) and str(copy.get("PatientID", "")) != "V-1"
            assert not copy.get("PatientBirthDate") and copy.StudyInstanceUID != chest.StudyInstanceUID
    reports = [ds for ds in stored if ds.Modality == "SR"]
    assert len(reports) == 3 and [r.VerificationFlag for r in reports] == ["UNVERIFIED", "VERIFIED", "VERIFIED"]
    for earlier, later in itertools.pairwise(reports):
        predecessor = later.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
        assert predecessor.ReferencedSOPInstanceUID == earlier.SOPInstanceUID
    assert any("tuberculosis" in str(item.get("TextValue", "")) for item in _items(reports[2]))


def _items(ds: Any) -> Iterator[Any]:
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _items(item)


def test_a_view_without_view_position_is_routed_by_its_view_code() -> None:
    from care_companion.interop.dicom_inbox import Unroutable, route

    def coded(value: str, meaning: str) -> Dataset:
        ds = dicom_film(film(20), body_part="WRIST", view="")
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "SCT", meaning
        ds.ViewCodeSequence = [item]
        return ds

    assert route(coded("272479007", "postero-anterior"), [CHEST, WRIST]).view == "pa"
    assert route(coded("399067008", "lateral"), [CHEST, WRIST]).view == "lateral"
    with pytest.raises(Unroutable, match="ViewPosition"):
        route(coded("399059000", "postero-anterior oblique"), [CHEST, WRIST])  # an oblique is no view of ours
    with pytest.raises(Unroutable, match="ViewPosition"):
        route(dicom_film(film(21), body_part="WRIST", view=""), [CHEST, WRIST])  # neither given


def test_a_patient_is_matched_by_mrn_or_registered_in_one_request(tmp_path: Path) -> None:
    users = (("tech", "technician", "er"), ("icu", "technician", "icu"))
    with clinic(tmp_path, users) as (client, tokens):

        def match(user: str, **fields: str) -> Any:
            body = {"mrn": "M-9", "name": "Jane Doe", **fields}
            return client.post("/v1/patients/match", json=body, headers={"Authorization": f"Bearer {tokens[user]}"})

        created = match("tech")
        assert created.status_code == 201 and created.json()["department"] == "er"
        again = match("tech", name="another name")  # found by MRN: the record is not changed
        assert again.status_code == 200 and again.json() == created.json()
        assert match("icu").status_code == 404  # another department's patient
        assert client.post("/v1/patients/match", json={"mrn": "M-9", "name": "x"}).status_code == 401
        gateway = ServiceGateway(client, tokens["tech"])
        assert gateway.patient_id(dicom_film(film(30), patient="M-9")) == created.json()["id"]
