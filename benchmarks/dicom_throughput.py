"""DICOM in, against HTTP upload: studies per second received over C-STORE and predicted (receiver, spool, settled
study through the service's API, stored in the records) against the same films uploaded over HTTP
(``POST /v1/predict/chest`` with the patient), in one run, one process, the same service and model.

The service runs in-process (ASGI test client) on a random-weight chest model of the recipe's backbone and input
size (throughput does not depend on the weights); the films are real chest radiographs from ``../shared/data``
(generated ones where it is absent), each sent as its own study of one patient.
"""

from __future__ import annotations

import argparse
import io
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from fastapi.testclient import TestClient
from PIL import Image

from benchmarks.common import write_result
from benchmarks.heatmap_cost import bundle_for
from care_companion.config import Settings
from care_companion.data.synthetic_chest import synth_chest
from care_companion.imaging.decode import decode_file
from care_companion.interop.dicom_gateway import ServiceGateway, process_study
from care_companion.interop.dicom_inbox import Spool
from care_companion.interop.dicom_listener import Receiver, start_listener
from care_companion.interop.dicom_results import Destination, send
from care_companion.records.db import upgrade
from care_companion.serving.app import create_app
from care_companion.tasks import CHEST, WRIST
from care_companion.workflows.accounts import open_account

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cxr-real"


def films(count: int) -> list[np.ndarray]:
    """Real chest films (generated ones where the shared data is absent)."""
    paths = sorted(p for folder in sorted(SHARED.glob("*")) if folder.is_dir() for p in sorted(folder.iterdir()))
    if paths:
        return [decode_file(p) for p in paths[:: max(1, len(paths) // count)][:count]]
    rng = np.random.default_rng(0)
    return [synth_chest("normal", rng, 512) for _ in range(count)]


def as_dicom(pixels: np.ndarray, index: int) -> pydicom.Dataset:
    """A film as a modality sends it: its own study of patient BENCH-1."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "BENCH-1", "Bench^Patient", "DX"
    ds.BodyPartExamined, ds.ViewPosition, ds.InstanceNumber = "CHEST", "PA", index + 1
    ds.set_pixel_data(pixels, photometric_interpretation="MONOCHROME2", bits_stored=8)
    return ds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def over_dicom(client: TestClient, key: str, instances: list[pydicom.Dataset], root: Path) -> float:
    """Seconds from the first C-STORE to the last study stored through the service."""
    spool = Spool(root / "spool")
    port = free_port()
    server = start_listener(Receiver(spool, [CHEST, WRIST], 10**8), port=port)
    gateway = ServiceGateway(client, key)
    started = time.perf_counter()
    try:
        send(instances, Destination("CARECOMPANION", "127.0.0.1", port), "BENCH")  # one association
        for study in spool.settled(0):
            outcome = process_study(spool, study, gateway, [CHEST, WRIST])
            assert outcome.status == 200, outcome.problems
    finally:
        server.shutdown()
    return time.perf_counter() - started


def over_http(client: TestClient, key: str, pngs: list[bytes], patient_id: int) -> float:
    """Seconds to upload each film as PNG for the same patient (one study each)."""
    started = time.perf_counter()
    for data in pngs:
        response = client.post(
            "/v1/predict/chest",
            files={"file": ("film.png", data, "image/png")},
            data={"patient_id": str(patient_id)},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert response.status_code == 200, response.text
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--films", type=int, default=40)
    args = parser.parse_args()
    pixels = films(args.films)
    pngs = []
    for f in pixels:
        out = io.BytesIO()
        Image.fromarray(f).save(out, format="PNG")
        pngs.append(out.getvalue())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bundle = bundle_for(CHEST, root / "chest")
        settings = Settings(data_dir=root / "care-data", chest_model=str(bundle), model_poll_seconds=0)
        upgrade(settings.db_url)
        key = open_account(settings, username="bench", role="technician", api_key=True).api_key or ""
        with TestClient(create_app(settings)) as client:
            headers = {"Authorization": f"Bearer {key}"}
            over_http(client, key, pngs[:2], _patient(client, headers))  # warm-up: model, sessions, caches
            dicom_s = over_dicom(client, key, [as_dicom(f, i) for i, f in enumerate(pixels)], root)
            http_s = over_http(client, key, pngs, _patient(client, headers))
    n = len(pixels)
    result: dict[str, Any] = {
        "films": n,
        "dicom_studies_per_s": n / dicom_s,
        "http_studies_per_s": n / http_s,
        "ratio": (n / dicom_s) / (n / http_s),
        "film_size": [int(pixels[0].shape[0]), int(pixels[0].shape[1])],
    }
    md = (
        "## DICOM in: C-STORE against HTTP upload\n\n"
        f"{n} real chest films (`../shared/data/cxr-real`, first film {result['film_size'][0]} x "
        f"{result['film_size'][1]} px), each its own study of one patient; one process: the service in-process on "
        f"a random-weight {CHEST.recipe.backbone} at {CHEST.recipe.image_size} px. DICOM: one association sends every "
        "instance to the receiver (kept in the spool before each acknowledgement), then each settled study goes "
        "through the service's API (patient lookup, `POST /v1/predict/chest` with the DICOM film, stored). HTTP: "
        "the same films as PNG, one upload each with the patient.\n\n"
        "| path | studies/s |\n|---|---|\n"
        f"| C-STORE → receiver → service | {result['dicom_studies_per_s']:.1f} |\n"
        f"| HTTP upload (PNG) | {result['http_studies_per_s']:.1f} |\n"
        f"| ratio DICOM / HTTP | {result['ratio']:.2f} |\n"
    )
    write_result("dicom_throughput", result, command="python -m benchmarks.dicom_throughput", markdown=md)
    print(md)


def _patient(client: TestClient, headers: dict[str, str]) -> int:
    found = client.get("/v1/patients", params={"q": "BENCH-1"}, headers=headers).json()["data"]
    if found:
        return int(found[0]["id"])
    created = client.post("/v1/patients", json={"mrn": "BENCH-1", "name": "Bench Patient"}, headers=headers)
    return int(created.json()["id"])


if __name__ == "__main__":
    main()
