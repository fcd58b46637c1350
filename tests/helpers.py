"""Builders shared by several test modules: in-memory DICOM files and a service client on a real bundle."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from care_companion.config import Settings
from care_companion.serving.app import create_app
from tests.conftest import add_profile, write_bundle

PNEUMONIA_LOGITS = [0.0, 3.0, 1.0, -2.0]  # softmax: normal .04, pneumonia .84, tuberculosis .11, unknown .01
RESULT_KEYS = {
    "request_id",
    "task",
    "label",
    "probabilities",
    "decision",
    "confidence",
    "confidence_reasons",
    "views_used",
    "review_required",
    "warning",
    "model",
    "latency_ms",
    "study_id",
    "image_id",
    "prediction_id",
    "heatmap",
}


def dicom_bytes(
    pixels: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 16,
    preamble: bool = True,
    **attributes: object,
) -> bytes:
    """An in-memory DICOM file (Explicit VR Little Endian) with the given pixels and extra attributes."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "DX"
    if pixels is not None:
        ds.set_pixel_data(pixels, photometric_interpretation=photometric, bits_stored=bits_stored)
    else:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for key, value in attributes.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    if preamble:
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.preamble = b"\0" * 128
        ds.save_as(buf, enforce_file_format=True, implicit_vr=False, little_endian=True)
    else:
        del ds.file_meta
        ds.save_as(buf, implicit_vr=True, little_endian=True)
    return buf.getvalue()


def dicom_film(
    pixels: np.ndarray,
    *,
    body_part: str = "CHEST",
    view: str = "PA",
    patient: str = "MRN-77",
    study: str | None = None,
    **attributes: object,
) -> Any:
    """A film as a modality sends it (a pydicom ``Dataset``): patient, study and series attributes, body part and
    view position."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(pixels, bits_stored=8 if pixels.dtype == np.uint8 else 16)))
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = patient, "Doe^Jane", "19800101", "F"
    ds.StudyInstanceUID = study or pydicom.uid.generate_uid()
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.StudyID, ds.AccessionNumber, ds.StudyDate, ds.StudyTime = "1", "ACC-1", "20261203", "093000"
    ds.ReferringPhysicianName, ds.SeriesNumber, ds.InstanceNumber = "", 1, 1
    ds.BodyPartExamined, ds.ViewPosition = body_part, view
    for key, value in attributes.items():
        setattr(ds, key, value)
    return ds


def ai_result(*verdicts: Any, label: str = "pneumonia") -> Any:
    """A stored chest result (prediction 12 of study 5, patient MRN-77, model chest 3) with these verdicts."""
    from datetime import UTC, datetime

    from care_companion.interop.fhir import AiResult
    from care_companion.tasks import CHEST

    return AiResult(
        prediction_id=12,
        task=CHEST,
        label=label,
        probabilities={"normal": 0.04, "pneumonia": 0.84, "tuberculosis": 0.11, "unknown": 0.01},
        threshold=0.21,
        positive=True,
        confidence="high",
        model_name="chest",
        model_version="3",
        created_at=datetime(2026, 12, 3, 9, 30, tzinfo=UTC),
        study_id=5,
        accession="ACC-1",
        patient_mrn="MRN-77",
        verdicts=verdicts,
    )


@contextmanager
def clinic(root: Path, users: tuple[tuple[str, str, str], ...]) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """A running service on a constant chest bundle and a (briefly trained) two-view wrist bundle, with these
    (username, role, department) users; yields the client and each user's token."""
    from care_companion.tasks import WRIST

    wrist = write_bundle(root / "wrist", task=WRIST, backbone="test_resnet", reject_bias=-20)
    with service_client(root / "service", login=False, wrist_model=str(wrist)) as client:
        app: Any = client.app
        with app.state.sessions() as session, session.begin():
            seed_users(session, users)
        yield client, tokens_for(app.state.settings, users)


def migrated(settings: Settings) -> Settings:
    """``settings`` after migrating its records database (the service refuses an unmigrated one)."""
    from care_companion.records.db import upgrade

    upgrade(settings.db_url)
    return settings


@contextmanager
def service_client(
    root: Path,
    *,
    logits: list[float] = PNEUMONIA_LOGITS,
    raise_server_exceptions: bool = True,
    login: bool = True,
    profile: bool = False,
    **overrides: Any,
) -> Iterator[TestClient]:
    """A running service (lifespan included) on a fresh constant-output bundle, CARE_/MLFLOW_ env cleared;
    with ``login`` the client sends a technician's token (:func:`sign_in`) on every request; with ``profile``
    the bundle has a drift reference profile."""
    bundle = write_bundle(root / "bundle", logits=logits)
    if profile:
        add_profile(bundle)
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith(("CARE_", "MLFLOW_")):
                mp.delenv(name)
        settings = Settings(data_dir=root / "care-data", chest_model=str(bundle), model_poll_seconds=0, **overrides)
        app = create_app(migrated(settings))
        with TestClient(app, raise_server_exceptions=raise_server_exceptions) as client:
            if login:
                sign_in(client)
            yield client


def seed_users(session: Any, users: tuple[tuple[str, str, str], ...]) -> None:
    """Create (username, role, department) users without passwords (tests sign their tokens directly)."""
    from care_companion.records.repos import create_user
    from care_companion.records.schemas import UserCreate

    for name, role, department in users:
        create_user(
            session=session,
            user_in=UserCreate.model_validate(
                {"username": name, "full_name": name, "role": role, "department": department}
            ),
            password_hash=None,
        )


def tokens_for(settings: Settings, users: tuple[tuple[str, str, str], ...]) -> dict[str, str]:
    """An access token per (username, role, department)."""
    from care_companion.security import create_access_token

    return {
        name: create_access_token(username=name, role=role, department=department, settings=settings)
        for name, role, department in users
    }


UPLOADER = ("uploader", "technician", "radiology")


def user_token(settings: Settings, user: tuple[str, str, str] = UPLOADER, sessions: Any = None) -> str:
    """An access token for ``user`` (username, role, department), created in the records database of
    ``settings`` (or of ``sessions``) when missing."""
    from care_companion.records.db import make_engine, session_factory
    from care_companion.records.repos import get_user_by_username

    engine = None
    if sessions is None:
        engine = make_engine(settings.db_url)
        sessions = session_factory(engine)
    try:
        with sessions() as session, session.begin():
            if get_user_by_username(session=session, username=user[0]) is None:
                seed_users(session, (user,))
    finally:
        if engine is not None:
            engine.dispose()
    return tokens_for(settings, (user,))[user[0]]


def sign_in(client: TestClient, user: tuple[str, str, str] = UPLOADER) -> str:
    """Make the client send ``user``'s access token on every request (:func:`user_token`); returns it."""
    app: Any = client.app
    token = user_token(app.state.settings, user, app.state.sessions)
    client.headers["Authorization"] = f"Bearer {token}"
    return token


@contextmanager
def sqlite_session(directory: Path) -> Iterator[Any]:
    """One session in a transaction on a fresh SQLite records database (tables made from the models) in
    ``directory``: nothing is committed between a rule and the test's assertions, as in a request."""
    from care_companion.records.db import make_engine, session_factory
    from care_companion.records.models import Base

    engine = make_engine(f"sqlite:///{directory / 'care.db'}")
    Base.metadata.create_all(engine)
    try:
        with session_factory(engine)() as session, session.begin():
            yield session
    finally:
        engine.dispose()


@contextmanager
def stand_in_pacs(port: int, ae_title: str = "PACS", tls: Any = None) -> Iterator[list[Any]]:
    """A PACS stand-in (pynetdicom) on ``port`` that takes every C-STORE (over TLS with the ``ssl.SSLContext``
    ``tls``); yields the data sets stored, in order."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    stored: list[Any] = []

    def keep(event: Any) -> int:
        stored.append(event.dataset)
        return 0x0000

    pacs = AE(ae_title=ae_title)
    pacs.supported_contexts = AllStoragePresentationContexts
    server = pacs.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, keep)], ssl_context=tls
    )
    try:
        yield stored
    finally:
        server.shutdown()
