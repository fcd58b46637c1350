"""Faults on the DICOM way in: an association aborted mid-study and a receiver killed mid-study (SIGKILL) lose no
acknowledged instance and leave nothing half-written; a flood of associations past the limit is refused while the
admitted ones are served; an instance in a transfer syntax the receiver does not take is never accepted; the
receiver keeps serving other senders."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest

from care_companion.interop.dicom_inbox import Spool
from care_companion.interop.dicom_listener import Receiver, start_listener
from care_companion.tasks import CHEST, WRIST
from tests.helpers import dicom_film
from tests.processes import free_port


def study(count: int, seed: int) -> list[pydicom.Dataset]:
    uid = pydicom.uid.generate_uid()
    rng = np.random.default_rng(seed)
    return [dicom_film((rng.random((128, 128)) * 255).astype(np.uint8), patient="F-1", study=uid) for _ in range(count)]


def associate(port: int) -> object:
    from pynetdicom import AE, StoragePresentationContexts

    ae = AE(ae_title="MODALITY")
    ae.requested_contexts = StoragePresentationContexts
    association = ae.associate("127.0.0.1", port, ae_title="CARECOMPANION")
    assert association.is_established
    return association


def test_an_association_aborted_mid_study_keeps_what_was_acknowledged(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    port = free_port()
    server = start_listener(Receiver(spool, [CHEST, WRIST], 10**8), port=port)
    try:
        films = study(3, 1)
        association = associate(port)
        assert int(association.send_c_store(films[0]).Status) == 0  # type: ignore[attr-defined]
        association.abort()  # type: ignore[attr-defined]  # the sender goes away mid-study
        later = associate(port)  # and the receiver still serves
        assert int(later.send_c_store(films[1]).Status) == 0  # type: ignore[attr-defined]
        later.release()  # type: ignore[attr-defined]
    finally:
        server.shutdown()
    kept = {pydicom.dcmread(p).SOPInstanceUID for p in spool.instances(str(films[0].StudyInstanceUID))}
    assert kept == {films[0].SOPInstanceUID, films[1].SOPInstanceUID}
    assert not list(spool.root.rglob(".*.part"))


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[tuple[dict[str, str], int]]:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CARE_")},
        "CARE_DATA_DIR": str(tmp_path / "care-data"),
        "CARE_DICOM_PORT": str(port),
        "CARE_DICOM_API_KEY": "cc_unused",
        "CARE_DICOM_SERVICE_URL": f"http://127.0.0.1:{free_port()}",  # the service is down: studies stay
        "CARE_DICOM_SETTLE_SECONDS": "0",
        "CARE_NO_PROGRESS": "1",
    }
    yield env, port


def start(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "care_companion", "dicom", "listen"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.2)
    process.kill()
    pytest.fail("the DICOM receiver did not start listening")


def test_a_flood_of_associations_is_refused_past_the_limit_and_the_receiver_keeps_serving(tmp_path: Path) -> None:
    from pynetdicom import AE, StoragePresentationContexts

    spool = Spool(tmp_path / "spool")
    port = free_port()
    server = start_listener(Receiver(spool, [CHEST, WRIST], 10**8), port=port, max_associations=2)

    def try_associate() -> object:
        ae = AE(ae_title="FLOOD")
        ae.requested_contexts = StoragePresentationContexts
        ae.acse_timeout = ae.network_timeout = 5
        return ae.associate("127.0.0.1", port, ae_title="CARECOMPANION")

    try:
        held = [try_associate() for _ in range(2)]
        assert all(a.is_established for a in held)  # type: ignore[attr-defined]
        flood = [try_associate() for _ in range(20)]
        assert not any(a.is_established for a in flood)  # type: ignore[attr-defined]  # refused, not queued
        films = study(2, 3)
        assert int(held[0].send_c_store(films[0]).Status) == 0  # type: ignore[attr-defined]  # admitted: served
        for association in held:
            association.release()  # type: ignore[attr-defined]
        time.sleep(0.5)
        later = associate(port)  # the flood over, a sender is served again
        assert int(later.send_c_store(films[1]).Status) == 0  # type: ignore[attr-defined]
        later.release()  # type: ignore[attr-defined]
    finally:
        server.shutdown()
    assert len(spool.instances(str(films[0].StudyInstanceUID))) == 2


SENDER = """
import sys
import numpy as np
from pynetdicom import AE, StoragePresentationContexts
from tests.helpers import dicom_film

side = int(sys.argv[2])
ds = dicom_film(np.zeros((8, 8), np.uint16))
ds.Rows = ds.Columns = side
ds.PixelData = bytes(side * side * 2)
ae = AE(ae_title="MODALITY")
ae.requested_contexts = StoragePresentationContexts
association = ae.associate("127.0.0.1", int(sys.argv[1]), ae_title="CARECOMPANION")
print(f"{int(association.send_c_store(ds).Status):#06x}")
association.release()
"""


def test_a_huge_instance_is_refused_without_holding_it_in_memory(tmp_path: Path) -> None:
    """A 128 MB instance (16-bit, 8192 x 8192: over the pixel limit) from another process is refused with 0xC212
    while the receiver's own memory stays far below the instance's size (it arrives in a file, and its pixels are
    never read); the next instance is served."""
    import tracemalloc

    from care_companion.interop.dicom_listener import TOO_LARGE

    spool = Spool(tmp_path / "spool")
    port = free_port()
    server = start_listener(Receiver(spool, [CHEST, WRIST], 50_000_000), port=port)
    tracemalloc.start()
    try:
        sent = subprocess.run(
            [sys.executable, "-c", SENDER, str(port), "8192"],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=Path(__file__).resolve().parents[2],
        )
        _, peak = tracemalloc.get_traced_memory()
        assert sent.returncode == 0, sent.stderr[-2000:]
        assert sent.stdout.strip() == f"{TOO_LARGE:#06x}"
        assert peak < 32 * 2**20, f"the receiver held {peak / 2**20:.0f} MB for a 128 MB instance"
        later = associate(port)
        assert int(later.send_c_store(study(1, 5)[0]).Status) == 0  # type: ignore[attr-defined]
        later.release()  # type: ignore[attr-defined]
    finally:
        tracemalloc.stop()
        server.shutdown()
    assert len(spool.studies()) == 1 and not list(spool.unroutable.iterdir())


def test_an_unsupported_transfer_syntax_is_refused_at_negotiation(tmp_path: Path) -> None:
    """A sender offering an instance only in a private compressed transfer syntax gets no presentation context
    (so it cannot send what nobody here could decode); the association itself stands (its echo is answered)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    private = "1.2.826.0.1.3680043.9.9999.1"
    spool = Spool(tmp_path / "spool")
    port = free_port()
    server = start_listener(Receiver(spool, [CHEST, WRIST], 10**8), port=port)
    try:
        ae = AE(ae_title="MODALITY")
        film = study(1, 4)[0]
        ae.add_requested_context(str(film.SOPClassUID), [private])
        ae.add_requested_context(Verification)
        association = ae.associate("127.0.0.1", port, ae_title="CARECOMPANION")
        assert association.is_established
        accepted = {str(c.abstract_syntax) for c in association.accepted_contexts}
        rejected = {str(c.abstract_syntax) for c in association.rejected_contexts}
        assert str(film.SOPClassUID) in rejected and str(film.SOPClassUID) not in accepted
        with pytest.raises(ValueError):  # no accepted context for the film: it is never sent
            association.send_c_store(film)
        assert int(association.send_c_echo().Status) == 0
        association.release()
    finally:
        server.shutdown()
    assert spool.studies() == []


def test_a_receiver_killed_mid_study_loses_no_acknowledged_instance(listening: tuple[dict[str, str], int]) -> None:
    env, port = listening
    films = study(4, 2)
    process = start(env, port)
    acknowledged = []
    try:
        association = associate(port)
        for ds in films[:3]:
            assert int(association.send_c_store(ds).Status) == 0  # type: ignore[attr-defined]
            acknowledged.append(ds.SOPInstanceUID)
        process.send_signal(signal.SIGKILL)  # mid-study, the association still open
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    spool = Spool(Path(env["CARE_DATA_DIR"]) / "dicom-spool")
    uid = str(films[0].StudyInstanceUID)
    assert {pydicom.dcmread(p).SOPInstanceUID for p in spool.instances(uid)} == set(acknowledged)
    restarted = start(env, port)  # a new receiver takes the rest of the study
    try:
        association = associate(port)
        assert int(association.send_c_store(films[3]).Status) == 0  # type: ignore[attr-defined]
        association.release()  # type: ignore[attr-defined]
    finally:
        restarted.terminate()
        restarted.wait(timeout=20)
    assert len(spool.instances(uid)) == 4 and not list(spool.root.rglob(".*.part"))
