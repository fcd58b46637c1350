"""Results of a received study back to the PACS: the Structured Report and one heat-map Secondary Capture per view
read, built from the service's answer and the study's source instances, sent by C-STORE to the configured
destination; what cannot be sent now waits in the spool's ``outbox/`` and is sent again on a later round."""

from __future__ import annotations

import io
import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset

from care_companion.errors import ConfigError
from care_companion.interop.dicom_audit import AuditQueue, event_of
from care_companion.interop.dicom_metrics import ReceiverMetrics
from care_companion.interop.dicom_sr import heatmap_sc, random_uid, result_sr
from care_companion.interop.fhir import AiResult
from care_companion.tasks import TaskSpec

log = logging.getLogger(__name__)


class SendFailed(Exception):
    """The destination could not be reached or did not accept an instance."""


@dataclass(frozen=True)
class Destination:
    """A DICOM node results are sent to: ``AET@host:port``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        """``AET@host:port``.

        Raises:
            ValueError: another form.
        """
        try:
            ae_title, address = text.split("@", 1)
            host, port = address.rsplit(":", 1)
            return cls(ae_title.strip(), host.strip(), int(port))
        except ValueError as exc:
            raise ValueError(f"DICOM destination {text!r}: expected AET@host:port") from exc


def answer_result(answer: dict[str, Any], task: TaskSpec, patient_mrn: str) -> AiResult:
    """The result a service answer (``POST /v1/predict/{task}``) describes, as the report builders take it."""
    model = answer.get("model") or {}
    decision = answer.get("decision") or {}
    return AiResult(
        prediction_id=int(answer.get("prediction_id") or 0),
        task=task,
        label=str(answer["label"]),
        probabilities={k: float(v) for k, v in (answer.get("probabilities") or {}).items()},
        threshold=float(decision.get("threshold", 0.0)),
        positive=bool(decision.get("positive", False)),
        confidence=str(answer.get("confidence", "")),
        model_name=str(model.get("name", task.name)),
        model_version=model.get("version"),
        created_at=datetime.now(UTC),
        study_id=int(answer.get("study_id") or 0),
        accession=None,
        patient_mrn=patient_mrn,
    )


def overlay(film: np.ndarray, heatmap_rgba: np.ndarray) -> np.ndarray:
    """An RGB picture of a grayscale film with a see-through RGBA heat map of the same size laid over it."""
    base = np.repeat(np.asarray(film, dtype=np.float64)[..., None], 3, axis=-1)
    alpha = heatmap_rgba[..., 3:4].astype(np.float64) / 255.0
    return np.rint(base * (1 - alpha) + heatmap_rgba[..., :3] * alpha).clip(0, 255).astype(np.uint8)


def result_instances(
    result: AiResult,
    sources: Mapping[str, Dataset],
    films: Mapping[str, np.ndarray],
    heatmap_png: Callable[[str], bytes | None],
) -> list[Dataset]:
    """The SR of a study and a heat-map Secondary Capture per view read (``heatmap_png(view)``: the PNG, or None
    without a map), each in the source study."""
    return [result_sr(result, list(sources.values())), *heatmap_captures(result, sources, films, heatmap_png)]


def heatmap_captures(
    result: AiResult,
    sources: Mapping[str, Dataset],
    films: Mapping[str, np.ndarray],
    heatmap_png: Callable[[str], bytes | None],
    uid: Callable[[str], str] = random_uid,
) -> list[Dataset]:
    """A heat-map Secondary Capture per view read that has a map of the film's size (``uid``: the UIDs by role,
    suffixed with the view)."""
    out = []
    for view, source in sources.items():
        png = heatmap_png(view)
        if png is None or view not in films:
            continue
        rgba = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))
        if rgba.shape[:2] != films[view].shape:
            continue
        out.append(
            heatmap_sc(
                source,
                overlay(films[view], rgba),
                model=f"{result.model_name} {result.model_version}",
                uid=_suffixed(uid, view),
            )
        )
    return out


def client_tls(ca: Path | None, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext | None:
    """The TLS context for sending results to the PACS: its certificate checked against ``ca`` (PEM), with our
    own certificate and key when the PACS asks for one; None without ``ca`` (no TLS).

    Raises:
        ConfigError: a file that cannot be loaded.
    """
    if ca is None:
        return None
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if cert is not None and key is not None:
            context.load_cert_chain(certfile=cert, keyfile=key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"DICOM TLS to the PACS: cannot load {ca}{f', {cert} or {key}' if cert else ''}: {exc}"
        ) from exc
    return context


def _suffixed(uid: Callable[[str], str], suffix: str) -> Callable[[str], str]:
    return lambda role: uid(f"{role}-{suffix}")


def send(
    instances: list[Dataset], destination: Destination, calling_ae: str, tls: ssl.SSLContext | None = None
) -> None:
    """C-STORE each instance to ``destination`` (over TLS with ``tls``: :func:`client_tls`).

    Raises:
        SendFailed: no association, or an instance not accepted.
    """
    from pynetdicom import AE
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        Comprehensive3DSRStorage,
        ComprehensiveSRStorage,
        SecondaryCaptureImageStorage,
    )

    ae = AE(ae_title=calling_ae)
    for context in (Comprehensive3DSRStorage, ComprehensiveSRStorage, SecondaryCaptureImageStorage):
        ae.add_requested_context(context)
    association = ae.associate(
        destination.host,
        destination.port,
        ae_title=destination.ae_title,
        tls_args=(tls, destination.host) if tls is not None else None,
    )
    if not association.is_established:
        raise SendFailed(f"no association with {destination.ae_title}@{destination.host}:{destination.port}")
    try:
        for ds in instances:
            status = association.send_c_store(ds)
            code = int(getattr(status, "Status", -1))
            if code not in (0x0000, 0xB000, 0xB006, 0xB007):
                raise SendFailed(f"{destination.ae_title} refused {ds.SOPInstanceUID}: status 0x{code & 0xFFFF:04X}")
    finally:
        association.release()


class Outbox:
    """Results not sent yet (``outbox/`` in the spool), oldest first."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def put(self, instances: list[Dataset]) -> None:
        """Keep instances to send later (written whole, then renamed)."""
        for ds in instances:
            tmp = self.root / f".{ds.SOPInstanceUID}.part"
            ds.save_as(tmp, enforce_file_format=True)
            tmp.replace(self.root / f"{datetime.now(UTC).strftime('%Y%m%d%H%M%S%f')}-{ds.SOPInstanceUID}.dcm")

    def pending(self) -> list[Path]:
        """Waiting results, oldest first."""
        return sorted(self.root.glob("*.dcm"))

    def flush(
        self,
        sender: Callable[[list[Dataset]], None],
        on_sent: Callable[[Dataset], None] | None = None,
        on_failure: Callable[[SendFailed], None] | None = None,
    ) -> int:
        """Send what waits, oldest first, removing each once sent (``on_sent`` is told of it); stops at the first
        failure (kept for the next round; ``on_failure`` is told). Returns how many were sent."""
        sent = 0
        for path in self.pending():
            ds = pydicom.dcmread(path)
            try:
                sender([ds])
            except SendFailed as exc:
                log.warning("results wait in the outbox (%d): %s", len(self.pending()), exc)
                if on_failure is not None:
                    on_failure(exc)
                break
            path.unlink(missing_ok=True)
            sent += 1
            if on_sent is not None:
                on_sent(ds)
        return sent


@dataclass
class ResultsSink:
    """Where a received study's results go: kept in the outbox first, then sent (what fails waits there); with
    ``audit`` and ``metrics``, each instance sent is an audit event, and sends and what waits are counted."""

    outbox: Outbox
    destination: Destination
    calling_ae: str
    sent: SentReports | None = None  # the SRs sent, followed until a verdict supersedes them
    audit: AuditQueue | None = None
    metrics: ReceiverMetrics | None = None
    tls: ssl.SSLContext | None = None  # DICOM over TLS to the PACS (:func:`client_tls`)

    def deliver(self, instances: list[Dataset]) -> int:
        """Keep ``instances`` in the outbox and send everything waiting; returns how many were sent now."""
        self.outbox.put(instances)
        return self.retry()

    def retry(self) -> int:
        """Send what waits in the outbox; returns how many were sent."""
        count = self.outbox.flush(
            lambda batch: send(batch, self.destination, self.calling_ae, self.tls),
            on_sent=self._sent,
            on_failure=self._failed,
        )
        if self.metrics is not None:
            self.metrics.outbox_pending.set(len(self.outbox.pending()))
        return count

    def _sent(self, ds: Dataset) -> None:
        if self.metrics is not None:
            self.metrics.results_sent.inc()
        if self.audit is not None:
            self.audit.add(event_of(ds, "dicom.sent", peer=self.destination.ae_title))

    def _failed(self, _exc: SendFailed) -> None:
        if self.metrics is not None:
            self.metrics.send_failures.inc()


@dataclass
class SentReport:
    """An SR sent for a received study, followed until a radiologist's verdict supersedes it."""

    prediction_id: int
    study_id: int
    study_uid: str
    task: str
    mrn: str
    answer: dict[str, Any]
    sr_file: str  # the latest SR sent (the predecessor of the next)
    status: str = "preliminary"  # the result's FHIR status when that SR was sent
    verdicts: int = 0  # how many radiologists' verdicts that SR shows
    sent_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())  # when the first SR was sent


class SentReports:
    """The SRs sent for received studies (``sent/`` in the spool): each one's latest SR and the status it showed."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def record(self, report: SentReport, sr: Dataset) -> None:
        """Keep ``sr`` as the report's latest SR and the report itself (each file written whole, then renamed)."""
        import json

        sr_path = self.root / f"{report.prediction_id}-{sr.SOPInstanceUID}.sr.dcm"
        sr.save_as(sr_path.with_suffix(".part"), enforce_file_format=True)
        sr_path.with_suffix(".part").replace(sr_path)
        report.sr_file = str(sr_path)
        entry = self.root / f"{report.prediction_id}.json"
        entry.with_suffix(".part").write_text(json.dumps(report.__dict__))
        entry.with_suffix(".part").replace(entry)

    def followed(self, days: float) -> list[SentReport]:
        """Reports whose first SR was sent less than ``days`` ago: their result may yet get a (further) verdict."""
        import json

        since = datetime.now(UTC) - timedelta(days=days)
        reports = [SentReport(**json.loads(p.read_text())) for p in sorted(self.root.glob("*.json"))]
        return [r for r in reports if datetime.fromisoformat(r.sent_at) >= since]
