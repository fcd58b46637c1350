"""Running the DICOM receiver: every instance received and sent becomes an audit row in the service's records
(kept while the service is down), its work shows in Prometheus metrics (results waiting while the PACS is down,
then sent), and it speaks DICOM over TLS when given a certificate."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydicom.dataset import Dataset

from care_companion.config import Settings
from care_companion.errors import ConfigError
from care_companion.interop.dicom_audit import AuditQueue
from care_companion.interop.dicom_gateway import ServiceGateway
from care_companion.interop.dicom_inbox import Spool
from care_companion.interop.dicom_listener import (
    NO_PIXEL_DATA,
    UNROUTABLE,
    Receiver,
    Worker,
    server_tls,
    start_listener,
)
from care_companion.interop.dicom_metrics import ReceiverMetrics
from care_companion.interop.dicom_results import Destination, Outbox, ResultsSink, SentReports, client_tls
from care_companion.records.repos import list_audit
from care_companion.tasks import CHEST, WRIST
from tests.helpers import clinic, dicom_film, stand_in_pacs
from tests.processes import free_port

USERS = (("tech", "technician", "er"),)


def film(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((96, 96)) * 255).astype(np.uint8)


def c_store(port: int, instances: list[Dataset], *, tls: ssl.SSLContext | None = None) -> list[int] | None:
    """C-STORE each instance as MODALITY; the statuses, or None when no association was made."""
    from pynetdicom import AE, StoragePresentationContexts

    ae = AE(ae_title="MODALITY")
    ae.requested_contexts = StoragePresentationContexts
    ae.acse_timeout = ae.network_timeout = 5
    association = ae.associate(
        "127.0.0.1", port, ae_title="CARECOMPANION", tls_args=(tls, "127.0.0.1") if tls else None
    )
    if not association.is_established:
        return None
    try:
        return [int(association.send_c_store(ds).Status) for ds in instances]
    finally:
        association.release()


def scrape(port: int) -> dict[str, float]:
    """The receiver's metrics over HTTP, as Prometheus reads them: ``name{labels}`` -> value."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples = (line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("care_dicom"))
    return {name: float(value) for name, value in samples}


def test_received_and_sent_instances_are_audited_and_counted(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    metrics, audit = ReceiverMetrics(), AuditQueue(spool.root / "audit")
    receiver = Receiver(spool, [CHEST, WRIST], 200 * 200, audit=audit, metrics=metrics)
    port, pacs_port, metrics_port = free_port(), free_port(), free_port()
    server = start_listener(receiver, port=port, allowed_calling=["MODALITY"])
    metrics_server = metrics.serve(metrics_port, host="127.0.0.1")
    chest = dicom_film(film(1), patient="A-1")
    report = dicom_film(film(2), patient="A-1")
    del report.PixelData
    knee = dicom_film(film(3), body_part="KNEE", patient="A-1")
    try:
        assert c_store(port, [chest, report, knee]) == [0, NO_PIXEL_DATA, UNROUTABLE]
    finally:
        server.shutdown()
    assert len(audit.pending()) == 3

    results = ResultsSink(
        Outbox(spool.root / "outbox"),
        Destination("PACS", "127.0.0.1", pacs_port),  # nobody listens yet: the PACS is down
        "CARECOMPANION",
        SentReports(spool.root / "sent"),
        audit=audit,
        metrics=metrics,
    )
    try:
        down = ServiceGateway(httpx.Client(base_url=f"http://127.0.0.1:{free_port()}"), "no-key")
        Worker(spool, down, [CHEST, WRIST], settle_seconds=3600, audit=audit, metrics=metrics).round()
        assert len(audit.pending()) == 3  # the service is down: the events wait

        with clinic(tmp_path, USERS) as (client, tokens):
            worker = Worker(
                spool,
                ServiceGateway(client, tokens["tech"]),
                [CHEST, WRIST],
                settle_seconds=0,
                results=results,
                audit=audit,
                metrics=metrics,
            )
            [outcome] = worker.round()
            assert outcome.status == 200 and audit.pending() == []
            waiting = len(results.outbox.pending())
            assert waiting >= 2  # the SR and a heat-map Secondary Capture wait for the PACS
            seen = scrape(metrics_port)
            assert seen['care_dicom_instances_received_total{status="kept"}'] == 1
            assert seen['care_dicom_instances_received_total{status="no_pixel_data"}'] == 1
            assert seen['care_dicom_instances_received_total{status="unroutable"}'] == 1
            assert seen['care_dicom_studies_total{outcome="predicted",task="chest"}'] == 1
            assert seen["care_dicom_outbox_pending"] == waiting
            assert seen["care_dicom_result_send_failures_total"] >= 1 and seen["care_dicom_results_sent_total"] == 0

            with stand_in_pacs(pacs_port) as stored:
                worker.round()
            assert len(stored) == waiting and results.outbox.pending() == []
            seen = scrape(metrics_port)
            assert seen["care_dicom_outbox_pending"] == 0 and seen["care_dicom_results_sent_total"] == waiting
            assert seen["care_dicom_audit_pending"] == 0

            app: Any = client.app
            with app.state.sessions() as session:
                received, _ = list_audit(session=session, action="dicom.received")
                sent, _ = list_audit(session=session, action="dicom.sent")
        by_uid = {row.resource_id: row for row in received}
        assert set(by_uid) == {chest.SOPInstanceUID, report.SOPInstanceUID, knee.SOPInstanceUID}
        assert by_uid[knee.SOPInstanceUID].detail["status"] == UNROUTABLE
        assert all(row.detail["peer"] == "MODALITY" and row.username == "tech" for row in received)
        assert sorted(row.resource_id for row in sent) == sorted(str(ds.SOPInstanceUID) for ds in stored)
        assert all(row.detail["peer"] == "PACS" and row.detail["study_uid"] == chest.StudyInstanceUID for row in sent)
    finally:
        metrics_server.shutdown()


def test_audit_events_are_checked_by_the_service(tmp_path: Path) -> None:
    with clinic(tmp_path, USERS) as (client, tokens):
        headers = {"Authorization": f"Bearer {tokens['tech']}"}
        event = {"action": "dicom.received", "sop_instance_uid": "1.2.3", "at": "2026-12-04T10:00:00Z"}
        assert client.post("/v1/dicom/audit", json={"events": [event]}, headers=headers).json() == {"recorded": 1}
        for bad in ({**event, "action": "patient.delete"}, {**event, "sop_instance_uid": "Doe^Jane"}):
            answer = client.post("/v1/dicom/audit", json={"events": [bad]}, headers=headers)
            assert answer.status_code == 422, answer.text
        assert client.post("/v1/dicom/audit", json={"events": [event]}).status_code == 401


def _certificate(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_the_receiver_speaks_tls_and_refuses_plain_or_unknown_senders(tmp_path: Path) -> None:
    server_cert, server_key = _certificate(tmp_path, "receiver")
    client_cert, client_key = _certificate(tmp_path, "modality")
    stranger_cert, stranger_key = _certificate(tmp_path, "stranger")
    settings = Settings(
        data_dir=tmp_path / "data", dicom_tls_cert=server_cert, dicom_tls_key=server_key, dicom_tls_ca=client_cert
    )
    tls = server_tls(settings)
    assert tls is not None and tls.verify_mode == ssl.CERT_REQUIRED
    receiver = Receiver(Spool(tmp_path / "spool"), [CHEST, WRIST], 200 * 200)
    port = free_port()
    server = start_listener(receiver, port=port, tls=tls)

    def client_tls(cert: Path, key: Path) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(server_cert))
        context.load_cert_chain(cert, key)
        return context

    chest = dicom_film(film(4))
    try:
        assert c_store(port, [chest], tls=client_tls(client_cert, client_key)) == [0]
        assert c_store(port, [dicom_film(film(5))]) is None  # plain DICOM to a TLS port
        assert c_store(port, [dicom_film(film(6))], tls=client_tls(stranger_cert, stranger_key)) is None
    finally:
        server.shutdown()
    assert receiver.received == [chest.SOPInstanceUID]

    assert server_tls(Settings(data_dir=tmp_path / "data")) is None
    with pytest.raises(ConfigError, match="CARE_DICOM_TLS_KEY"):
        server_tls(Settings(data_dir=tmp_path / "data", dicom_tls_cert=server_cert))
    with pytest.raises(ConfigError, match="cannot load"):
        server_tls(Settings(data_dir=tmp_path / "data", dicom_tls_cert=server_key, dicom_tls_key=server_key))


def test_results_go_to_a_tls_pacs_only_when_its_certificate_checks_out(tmp_path: Path) -> None:
    pacs_cert, pacs_key = _certificate(tmp_path, "pacs")
    other_cert, _ = _certificate(tmp_path, "other")
    pacs_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    pacs_tls.load_cert_chain(pacs_cert, pacs_key)
    port = free_port()

    def sink(ca: Path | None) -> ResultsSink:
        tls = client_tls(ca)
        return ResultsSink(Outbox(tmp_path / f"outbox-{ca}"), Destination("PACS", "127.0.0.1", port), "CARE", tls=tls)

    with stand_in_pacs(port, tls=pacs_tls) as stored:
        trusted, plain, wrong = sink(pacs_cert), sink(None), sink(other_cert)
        assert trusted.deliver([dicom_film(film(7))]) == 1
        assert plain.deliver([dicom_film(film(8))]) == 0 and len(plain.outbox.pending()) == 1  # plain to TLS: waits
        assert wrong.deliver([dicom_film(film(9))]) == 0 and len(wrong.outbox.pending()) == 1  # unknown PACS: waits
    assert len(stored) == 1
    with pytest.raises(ConfigError, match="cannot load"):
        client_tls(tmp_path / "missing.pem")
