"""The round trip with a real PACS (Debian's Orthanc with its DICOMweb plugin, on free loopback ports with a
temporary storage folder): real chest films and a synthetic wrist study are stored in Orthanc, Orthanc sends them
to our receiver by C-STORE, the service predicts, and the Structured Report and heat-map Secondary Captures come
back into Orthanc, where the test reads them (REST and QIDO-RS) and checks the SR's finding, probabilities and
model version against the prediction."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest

from care_companion.config import Settings
from care_companion.data.synthetic_wrist import synthetic_wrist_studies
from care_companion.imaging.decode import decode_file
from care_companion.interop.dicom_gateway import ServiceGateway, process_study
from care_companion.interop.dicom_inbox import Spool
from care_companion.interop.dicom_listener import NO_PIXEL_DATA, UNROUTABLE, Receiver, pull_study, start_listener
from care_companion.interop.dicom_pull import PullError
from care_companion.interop.dicom_results import Destination, Outbox, ResultsSink
from care_companion.records.repos import list_predictions
from care_companion.tasks import CHEST, WRIST
from tests.conftest import shared_path, write_bundle
from tests.helpers import dicom_film, migrated, seed_users, service_client, tokens_for
from tests.processes import free_port

ORTHANC = Path("/usr/sbin/Orthanc")
PLUGINS = Path("/usr/share/orthanc/plugins")
USERS = (("tech", "technician", "er"),)

pytestmark = pytest.mark.integration


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A fresh Orthanc that knows our receiver as modality ``care``."""
    if not ORTHANC.is_file() or not (PLUGINS / "libOrthancDicomWeb.so").exists():
        pytest.skip("Orthanc with DICOMweb is not installed (Debian: apt-get install orthanc orthanc-dicomweb)")
    http, dicom, ours = free_port(), free_port(), free_port()
    config = {
        "Name": "care-test",
        "StorageDirectory": str(tmp_path / "orthanc-db"),
        "IndexDirectory": str(tmp_path / "orthanc-db"),
        "HttpPort": http,
        "DicomPort": dicom,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAlwaysAllowStore": True,
        "DicomCheckCalledAet": False,
        "DicomModalities": {"care": ["CARECOMPANION", "127.0.0.1", ours]},
        "Plugins": [str(PLUGINS)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (tmp_path / "orthanc.json").write_text(json.dumps(config))
    log = (tmp_path / "orthanc.log").open("w")
    process = subprocess.Popen([str(ORTHANC), str(tmp_path / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{http}", timeout=30)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if client.get("/system").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            pytest.fail(f"Orthanc did not start: {(tmp_path / 'orthanc.log').read_text()[-2000:]}")
        yield {"client": client, "dicom": dicom, "ours": ours}
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=20)
        log.close()
        shutil.rmtree(tmp_path / "orthanc-db", ignore_errors=True)


def films() -> list[pydicom.Dataset]:
    """Two real chest films (one study each) and a synthetic wrist PA + lateral study, as DICOM."""
    root = shared_path("cxr-real")
    chest = [sorted((root / label).iterdir())[0] for label in ("pneumonia", "normal")]
    out = [dicom_film(decode_file(path), body_part="CHEST", patient=f"C-{i}") for i, path in enumerate(chest)]
    study = pydicom.uid.generate_uid()
    wrist = synthetic_wrist_studies(1, seed=3, size=128, fracture_rate=1.0, min_severity=0.9, workers=1)[0]
    for view, position in (("pa", "PA"), ("lateral", "LL")):
        pixels = np.asarray(wrist.views[view], dtype=np.uint8)
        out.append(dicom_film(pixels, body_part="WRIST", view=position, patient="W-1", study=study))
    return out


def test_studies_from_orthanc_come_back_with_their_report(orthanc: dict[str, Any], tmp_path: Path) -> None:
    pacs: httpx.Client = orthanc["client"]
    sent = films()
    for ds in sent:
        buffer = tmp_path / "upload.dcm"
        ds.save_as(buffer, enforce_file_format=True)
        assert pacs.post("/instances", content=buffer.read_bytes()).status_code == 200

    wrist_bundle = write_bundle(tmp_path / "wrist", task=WRIST, backbone="test_resnet", reject_bias=-20)
    spool = Spool(tmp_path / "spool")
    receiver = Receiver(spool=spool, tasks=[CHEST, WRIST], max_pixels=50_000_000)
    server = start_listener(
        receiver, port=orthanc["ours"], ae_title="CARECOMPANION", allowed_calling=["ORTHANC"], max_associations=4
    )
    try:
        studies = pacs.get("/studies").json()
        moved = pacs.post("/modalities/care/store", json={"Resources": studies, "Synchronous": True})
        assert moved.status_code == 200, moved.text
    finally:
        server.shutdown()
    assert sorted(receiver.received) == sorted(ds.SOPInstanceUID for ds in sent)

    results = ResultsSink(
        Outbox(spool.root / "outbox"), Destination("ORTHANC", "127.0.0.1", orthanc["dicom"]), "CARECOMPANION"
    )
    with service_client(tmp_path / "service", login=False, wrist_model=str(wrist_bundle)) as client:
        app: Any = client.app
        with app.state.sessions() as session, session.begin():
            seed_users(session, USERS)
        gateway = ServiceGateway(client, tokens_for(app.state.settings, USERS)["tech"])
        outcomes = [process_study(spool, s, gateway, [CHEST, WRIST], results) for s in spool.settled(0)]
        assert len(outcomes) == 3 and all(o.status == 200 for o in outcomes), [o.problems for o in outcomes]
        assert results.outbox.pending() == []  # everything sent
        _check_reports(pacs, sent, outcomes)
        _pull_again(orthanc, client, gateway.headers["Authorization"].split()[1], outcomes, tmp_path)


def _check_reports(pacs: httpx.Client, sent: list[pydicom.Dataset], outcomes: list[Any]) -> None:
    """Each study's SR in Orthanc holds the service's answer; a heat-map Secondary Capture per view read."""

    patients = {str(ds.StudyInstanceUID): str(ds.PatientID) for ds in sent}
    for outcome in outcomes:
        series = pacs.get(f"/dicom-web/studies/{outcome.study_uid}/series", params={"Modality": "SR"})
        assert series.status_code == 200 and len(series.json()) == 1, series.text
        found = pacs.post(
            "/tools/find",
            json={"Level": "Instance", "Query": {"StudyInstanceUID": outcome.study_uid, "Modality": "SR"}},
        ).json()
        sr = pydicom.dcmread(io.BytesIO(pacs.get(f"/instances/{found[0]}/file").content))
        answer = outcome.answer
        finding = _finding(sr)
        task = CHEST if outcome.task == "chest" else WRIST
        code = task.codes.get(answer["label"])
        assert finding == (code.code if code else f"{task.name}-{answer['label']}")
        assert _probabilities(sr)[finding] == pytest.approx(answer["probabilities"][answer["label"]], abs=1e-6)
        assert (answer["model"]["version"] or "unversioned") in _texts(sr)  # the algorithm version
        assert str(sr.PatientID) == patients[outcome.study_uid]  # in the source's study, of its patient
        captures = pacs.post(
            "/tools/find",
            json={"Level": "Instance", "Query": {"StudyInstanceUID": outcome.study_uid, "Modality": "OT"}},
        ).json()
        assert len(captures) == len(answer["views_used"])  # a heat-map Secondary Capture per view read


@contextmanager
def live_service(root: Path, users: tuple[tuple[str, str, str], ...]) -> Iterator[tuple[str, Any, dict[str, str]]]:
    """The service on a free loopback port (uvicorn in a thread) with the chest test bundle and a wrist bundle;
    yields its URL, the app and each user's token."""
    import uvicorn

    from care_companion.serving.app import create_app

    port = free_port()
    chest = write_bundle(root / "chest")
    wrist = write_bundle(root / "wrist", task=WRIST, backbone="test_resnet", reject_bias=-20)
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith(("CARE_", "MLFLOW_"))]:
            mp.delenv(name)
        settings = Settings(
            data_dir=root / "care-data", chest_model=str(chest), wrist_model=str(wrist), model_poll_seconds=0
        )
        app: Any = create_app(migrated(settings))
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 60
            while not server.started:
                assert thread.is_alive() and time.monotonic() < deadline, "the service did not start"
                time.sleep(0.1)
            with app.state.sessions() as session, session.begin():
                seed_users(session, users)
            yield f"http://127.0.0.1:{port}", app, tokens_for(settings, users)
        finally:
            server.should_exit = True
            thread.join(timeout=30)


def test_studies_pushed_by_stow_rs_come_back_by_wado_rs(orthanc: dict[str, Any], tmp_path: Path) -> None:
    """Orthanc pushes a chest film and a wrist study to the service over STOW-RS (its DICOMweb client), the service
    predicts, and Orthanc retrieves the results over QIDO-RS/WADO-RS from the service: each study's SR lands in
    Orthanc with the finding, probability and model version of the prediction kept in our records."""
    pacs: httpx.Client = orthanc["client"]
    sent = films()[1:]  # a normal chest film and the wrist study
    for ds in sent:
        buffer = tmp_path / "upload.dcm"
        ds.save_as(buffer, enforce_file_format=True)
        assert pacs.post("/instances", content=buffer.read_bytes()).status_code == 200
    with live_service(tmp_path / "live", USERS) as (url, app, tokens):
        server = {"Url": f"{url}/dicomweb", "HttpHeaders": {"Authorization": f"Bearer {tokens['tech']}"}}
        assert pacs.put("/dicom-web/servers/care", json=server).status_code == 200
        pushed = pacs.post("/dicom-web/servers/care/stow", json={"Resources": pacs.get("/studies").json()})
        assert pushed.status_code == 200, pushed.text
        study_uids = sorted({str(ds.StudyInstanceUID) for ds in sent})
        fetched = pacs.post(
            "/dicom-web/servers/care/retrieve", json={"Resources": [{"Study": uid} for uid in study_uids]}
        )
        assert fetched.status_code == 200, fetched.text
        with app.state.sessions() as session:
            predictions, _ = list_predictions(session=session)
            kept = {p.task: (p.label, p.probabilities, p.model_version) for p in predictions}
    assert sorted(kept) == ["chest", "wrist"]
    for uid in study_uids:
        found = pacs.post(
            "/tools/find", json={"Level": "Instance", "Query": {"StudyInstanceUID": uid, "Modality": "SR"}}
        ).json()
        assert len(found) == 1, f"no SR of study {uid} in Orthanc"
        sr = pydicom.dcmread(io.BytesIO(pacs.get(f"/instances/{found[0]}/file").content))
        task = WRIST if any(ds.BodyPartExamined == "WRIST" and ds.StudyInstanceUID == uid for ds in sent) else CHEST
        label, probabilities, version = kept[task.name]
        code = task.codes.get(label)
        assert _finding(sr) == (code.code if code else f"{task.name}-{label}")
        assert _probabilities(sr)[_finding(sr)] == pytest.approx(probabilities[label], abs=1e-6)
        assert (version or "unversioned") in _texts(sr)


def _pull_again(orthanc: dict[str, Any], client: Any, token: str, outcomes: list[Any], tmp_path: Path) -> None:
    """``dicom pull`` of a chest study now in Orthanc with our results: WADO-RS brings the film, our SR and our
    heat map; only the film is read (the SR has no pixels, our Secondary Capture is our own result), a new
    prediction is made and its SR goes back to Orthanc; a study Orthanc lacks is a clear error."""
    pacs: httpx.Client = orthanc["client"]
    chest = next(o for o in outcomes if o.task == "chest")
    settings = Settings(
        data_dir=tmp_path / "puller",
        dicom_pacs_url=f"{pacs.base_url}/dicom-web",
        dicom_api_key=token,
        dicom_results_destination=f"ORTHANC@127.0.0.1:{orthanc['dicom']}",
    )
    pulled = pull_study(settings, chest.study_uid, service=client)
    codes = sorted(code for _, code, _ in pulled.statuses)
    assert codes == [0x0000, NO_PIXEL_DATA, UNROUTABLE], pulled.statuses
    assert pulled.outcome is not None and pulled.outcome.status == 200, pulled.outcome
    assert pulled.outcome.answer["prediction_id"] != chest.answer["prediction_id"]
    reports = pacs.post(
        "/tools/find", json={"Level": "Instance", "Query": {"StudyInstanceUID": chest.study_uid, "Modality": "SR"}}
    ).json()
    assert len(reports) == 2  # the first reading's SR and the new one
    with pytest.raises(PullError, match="has no study"):
        pull_study(settings, "1.2.3.4.5", service=client)


def _items(ds: Any) -> Iterator[Any]:
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _items(item)


def _finding(sr: Any) -> str:
    for group in _items(sr):
        inside = list(_items(group))
        if group.ValueType == "CONTAINER" and any(
            i.ValueType == "NUM" and i.ConceptNameCodeSequence[0].CodeValue == "threshold" for i in inside
        ):
            return next(
                str(i.ConceptCodeSequence[0].CodeValue)
                for i in inside
                if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].CodeValue == "121071"
            )
    raise AssertionError("no decision group in the SR")


def _probabilities(sr: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for group in _items(sr):
        if group.ValueType != "CONTAINER":
            continue
        inside = list(group.get("ContentSequence", []))
        kinds = [str(i.ConceptCodeSequence[0].CodeValue) for i in inside if i.ValueType == "CODE"]
        values = [
            float(i.MeasuredValueSequence[0].NumericValue)
            for i in inside
            if i.ValueType == "NUM" and i.ConceptNameCodeSequence[0].CodeValue == "122157"
        ]
        if kinds and values:
            out[kinds[0]] = values[0]
    return out


def _texts(sr: Any) -> set[str]:
    return {str(i.TextValue) for i in _items(sr) if i.ValueType == "TEXT"}
