"""The DICOM C-STORE receiver (pynetdicom): modalities and PACS send studies; each instance is checked, routed and
kept on disk before it is acknowledged, and a worker sends each settled study through the service.

Statuses a sender can get (PS3.4 storage service; the ``C2xx`` codes are this receiver's failures in the
"cannot understand" range, each with an ``ErrorComment``):

| status | meaning |
|---|---|
| ``0x0000`` | kept; it will be predicted on when its study settles |
| ``0xC210`` | no pixel data (a report, a presentation state): nothing to read |
| ``0xC211`` | no task reads it (body part or view): kept apart in ``unroutable/``, never guessed at |
| ``0xC212`` | larger than the decode limit (``CARE_MAX_IMAGE_PIXELS``) |
| ``0xC213`` | missing or malformed Study/SOP Instance UID |
| ``0xA700`` | could not be written to the spool (out of resources) |
| ``0xC000`` | not decodable as DICOM |

Associations from calling AE titles outside ``CARE_DICOM_ALLOWED_CALLING`` (when set) are rejected; at most
``CARE_DICOM_MAX_ASSOCIATIONS`` at once. A handler never raises: whatever an instance holds, the sender gets a
status and the server keeps serving.
"""

from __future__ import annotations

import io
import logging
import ssl
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import httpx
import pydicom
from pydicom.dataset import Dataset

from care_companion.config import Settings
from care_companion.errors import ConfigError
from care_companion.imaging.decode import has_pixel_data
from care_companion.interop.dicom_audit import AuditQueue, event_of
from care_companion.interop.dicom_gateway import (
    ServiceDown,
    ServiceGateway,
    StudyOutcome,
    follow_verdicts,
    process_study,
)
from care_companion.interop.dicom_inbox import Spool, Unroutable, instance_uid, route, study_uid
from care_companion.interop.dicom_metrics import ReceiverMetrics
from care_companion.interop.dicom_pull import retrieve_study
from care_companion.interop.dicom_results import Destination, Outbox, ResultsSink, SentReports, client_tls
from care_companion.tasks import TaskSpec

log = logging.getLogger(__name__)

NO_PIXEL_DATA, UNROUTABLE, TOO_LARGE, BAD_UID, OUT_OF_RESOURCES = 0xC210, 0xC211, 0xC212, 0xC213, 0xA700
UNREADABLE = 0xC000
DEFER_BYTES = 64 * 1024  # values larger than this (pixel data) are read from the received file only when kept


@dataclass
class Receiver:
    """What the C-STORE handler needs: the spool, the tasks to route to and the pixel limit; with ``audit`` and
    ``metrics``, every instance answered is an audit event and counted by its status."""

    spool: Spool
    tasks: list[TaskSpec]
    max_pixels: int
    received: list[str] = field(default_factory=list)  # SOP Instance UIDs acknowledged, in order
    audit: AuditQueue | None = None
    metrics: ReceiverMetrics | None = None

    def store(self, ds: Dataset, peer: str = "") -> tuple[int, str]:
        """Check, route and keep one instance from ``peer`` (the calling AE title); the DICOM status and a comment
        for the sender. Never raises: whatever the instance holds, the sender gets a status."""
        try:
            code, comment = self._keep(ds)
        except Exception as exc:  # a broken instance is the sender's failure, not ours
            log.warning("unreadable DICOM instance: %s", exc)
            code, comment = UNREADABLE, f"cannot understand: {exc}"
        self.note(ds, code, peer)
        return code, comment

    def note(self, ds: Dataset, code: int, peer: str) -> None:
        """Count an instance answered with ``code`` and keep its audit event (a failure here is logged only)."""
        if self.metrics is not None:
            self.metrics.received(code)
        if self.audit is not None:
            try:
                self.audit.add(event_of(ds, "dicom.received", status=code, peer=peer))
            except Exception:
                log.exception("audit event of a received instance not kept")

    def _keep(self, ds: Dataset) -> tuple[int, str]:
        try:
            study_uid(ds)
            sop = instance_uid(ds)
        except Unroutable as exc:
            return BAD_UID, str(exc)
        if not has_pixel_data(ds):
            return NO_PIXEL_DATA, "no pixel data: nothing to read"
        pixels = int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) * int(ds.get("NumberOfFrames", 1) or 1)
        if pixels > self.max_pixels:
            return TOO_LARGE, f"{pixels} pixels, over the limit of {self.max_pixels}"
        try:
            route(ds, self.tasks)
            routable, status, comment = True, 0x0000, "kept"
        except Unroutable as exc:
            routable, status, comment = False, UNROUTABLE, str(exc)
        try:
            self.spool.keep(ds, routable=routable)
        except OSError as exc:
            log.error("cannot keep DICOM instance %s: %s", sop, exc)
            return OUT_OF_RESOURCES, "could not be kept"
        if routable:
            self.received.append(sop)
        else:
            log.warning("DICOM instance %s kept apart: %s", sop, comment)
        return status, comment


def status(code: int, comment: str) -> Dataset:
    """A C-STORE response status with its error comment (LO: at most 64 characters)."""
    ds = Dataset()
    ds.Status = code
    if code:
        ds.ErrorComment = comment[:64]
    return ds


def start_listener(
    receiver: Receiver,
    *,
    port: int,
    ae_title: str = "CARECOMPANION",
    allowed_calling: list[str] | tuple[str, ...] = (),
    max_associations: int = 8,
    host: str = "0.0.0.0",
    tls: ssl.SSLContext | None = None,
) -> Any:
    """Start the C-STORE server in background threads (over TLS with ``tls``: :func:`server_tls`); returns the
    pynetdicom server (``shutdown()`` stops it)."""
    from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    def on_store(event: Any) -> Dataset:
        peer = str(event.assoc.requestor.ae_title or "").strip()
        try:  # the instance as pynetdicom wrote it to a file while it arrived; large values are read when needed
            ds = pydicom.dcmread(event.dataset_path, defer_size=DEFER_BYTES)
        except Exception as exc:  # a handler must answer: a broken instance is the sender's failure, not ours
            log.warning("undecodable DICOM instance from %s: %s", peer, exc)
            receiver.note(Dataset(), UNREADABLE, peer)
            return status(UNREADABLE, f"cannot understand: {exc}")
        return status(*receiver.store(ds, peer))

    # Each instance is written to a temporary file as its fragments arrive, not gathered in memory: a 1 GB
    # instance (refused by its declared size) or many at once cost disk, not the receiver's memory.
    _config.STORE_RECV_CHUNKED_DATASET = True
    ae = AE(ae_title=ae_title)
    ae.maximum_associations = max_associations
    ae.require_calling_aet = list(allowed_calling)
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(Verification)
    return ae.start_server((host, port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)], ssl_context=tls)


def server_tls(settings: Settings) -> ssl.SSLContext | None:
    """The receiver's TLS context (DICOM over TLS, PS3.15 B.1): ``CARE_DICOM_TLS_CERT`` and ``CARE_DICOM_TLS_KEY``
    (PEM); with ``CARE_DICOM_TLS_CA``, senders must show a certificate that CA signed. None without a certificate.

    Raises:
        ConfigError: a key without a certificate (or the reverse), or a file that cannot be loaded.
    """
    cert, key, ca = settings.dicom_tls_cert, settings.dicom_tls_key, settings.dicom_tls_ca
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ConfigError("DICOM TLS needs both CARE_DICOM_TLS_CERT and CARE_DICOM_TLS_KEY")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=cert, keyfile=key)
        if ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"DICOM TLS: cannot load {cert}, {key}{f' or {ca}' if ca else ''}: {exc}") from exc
    return context


@dataclass
class Worker:
    """The receiver's background work, one round at a time: send waiting results to the PACS, have the service
    record waiting audit events, follow sent reports for new verdicts (every ``follow_seconds``), and send each
    settled study through the service. What the service or the PACS cannot take now waits for a later round."""

    spool: Spool
    gateway: ServiceGateway
    tasks: list[TaskSpec]
    settle_seconds: float
    results: ResultsSink | None = None
    audit: AuditQueue | None = None
    metrics: ReceiverMetrics | None = None
    follow_seconds: float = 30.0
    follow_days: float = 14.0
    on_outcome: Callable[[StudyOutcome], None] | None = None
    _followed_at: float = field(default=float("-inf"), repr=False)

    def round(self, now: float | None = None) -> list[StudyOutcome]:
        """One round of the work; returns what became of the studies processed in it."""
        now = time.monotonic() if now is None else now
        if self.results is not None:
            self.results.retry()
            if now - self._followed_at >= self.follow_seconds:
                self._followed_at = now
                try:
                    follow_verdicts(self.spool, self.gateway, self.results, follow_days=self.follow_days)
                except ServiceDown as exc:
                    log.warning("verdicts not followed now: %s", exc)
        outcomes = []
        for study in self.spool.settled(self.settle_seconds):
            try:
                outcome = process_study(self.spool, study, self.gateway, self.tasks, self.results)
            except ServiceDown as exc:
                log.warning("DICOM study %s waits: %s", study, exc)
                break
            except Exception:  # one bad study must not stop the others
                log.exception("DICOM study %s failed", study)
                continue
            outcomes.append(outcome)
            if self.metrics is not None:
                self.metrics.study(outcome.task, _outcome_name(outcome))
            if self.on_outcome is not None:
                self.on_outcome(outcome)
        self.record_audit()
        if self.metrics is not None:
            self.metrics.studies_waiting.set(len(self.spool.studies()))
        return outcomes

    def run(self, stop: threading.Event, poll_seconds: float = 1.0) -> None:
        """Rounds until ``stop`` is set."""
        while not stop.is_set():
            self.round()
            stop.wait(poll_seconds)

    def record_audit(self) -> None:
        """Have the service record the waiting audit events (they wait while it cannot)."""
        if self.audit is None:
            return
        try:
            self.audit.flush(self.gateway.record_events)
        except ServiceDown as exc:
            log.warning("DICOM audit events wait (%d): %s", len(self.audit.pending()), exc)
        if self.metrics is not None:
            self.metrics.audit_pending.set(len(self.audit.pending()))


def _outcome_name(outcome: StudyOutcome) -> str:
    if outcome.status == 200:
        return "predicted"
    return "refused" if outcome.status is not None else "unfiled"


@dataclass
class Setup:
    """The receiver's parts as its settings make them: the spool, the tasks, the audit queue, the metrics and the
    C-STORE handler; shared by ``dicom listen`` and ``dicom pull``."""

    settings: Settings
    spool: Spool
    tasks: list[TaskSpec]
    audit: AuditQueue
    metrics: ReceiverMetrics
    receiver: Receiver

    @classmethod
    def of(cls, settings: Settings) -> Setup:
        """The parts for ``settings``.

        Raises:
            ConfigError: no API key for the service.
        """
        from care_companion.tasks import all_tasks

        if settings.dicom_api_key is None:
            raise ConfigError("set CARE_DICOM_API_KEY: the receiver files studies through the service as a technician")
        spool = Spool(settings.data_dir / "dicom-spool")
        swept = spool.sweep_partials()
        if swept:
            log.info("removed %d partly written instances (never acknowledged)", swept)
        tasks, metrics, audit = all_tasks(), ReceiverMetrics(), AuditQueue(spool.root / "audit")
        receiver = Receiver(spool, tasks, settings.max_image_pixels, audit=audit, metrics=metrics)
        return cls(settings, spool, tasks, audit, metrics, receiver)

    def gateway(self, client: httpx.Client) -> ServiceGateway:
        """The service's API over ``client`` (base URL ``CARE_DICOM_SERVICE_URL``) with the receiver's key."""
        assert self.settings.dicom_api_key is not None  # checked in of()
        return ServiceGateway(client, self.settings.dicom_api_key.get_secret_value())

    def results(self) -> ResultsSink | None:
        """Where results go (``CARE_DICOM_RESULTS_DESTINATION``), or None when they are not sent."""
        if not self.settings.dicom_results_destination:
            return None
        return ResultsSink(
            Outbox(self.spool.root / "outbox"),
            Destination.parse(self.settings.dicom_results_destination),
            self.settings.dicom_ae_title,
            SentReports(self.spool.root / "sent"),
            audit=self.audit,
            metrics=self.metrics,
            tls=client_tls(
                self.settings.dicom_results_tls_ca, self.settings.dicom_tls_cert, self.settings.dicom_tls_key
            ),
        )

    def worker(self, gateway: ServiceGateway) -> Worker:
        """The background worker over ``gateway``."""
        cfg = self.settings
        return Worker(
            self.spool,
            gateway,
            self.tasks,
            settle_seconds=cfg.dicom_settle_seconds,
            results=self.results(),
            audit=self.audit,
            metrics=self.metrics,
            follow_seconds=cfg.dicom_follow_seconds,
            follow_days=cfg.dicom_follow_days,
        )


def service_client(settings: Settings) -> httpx.Client:
    """An HTTP client of the service the receiver files studies through."""
    return httpx.Client(base_url=settings.dicom_service_url, timeout=60.0)


def run_receiver(settings: Settings, stop: threading.Event) -> None:
    """``care-companion dicom listen``: the C-STORE server on ``CARE_DICOM_PORT`` (TLS with
    ``CARE_DICOM_TLS_CERT``/``_KEY``), its metrics on ``CARE_DICOM_METRICS_PORT``, and the worker that sends
    settled studies to the service at ``CARE_DICOM_SERVICE_URL`` with ``CARE_DICOM_API_KEY``, until ``stop`` is set.

    Raises:
        ConfigError: no API key for the service, or a TLS setting that cannot be used.
    """
    tls = server_tls(settings)
    setup = Setup.of(settings)
    metrics_server = setup.metrics.serve(settings.dicom_metrics_port) if settings.dicom_metrics_port else None
    server = start_listener(
        setup.receiver,
        port=settings.dicom_port,
        ae_title=settings.dicom_ae_title,
        allowed_calling=settings.dicom_allowed_calling,
        max_associations=settings.dicom_max_associations,
        tls=tls,
    )
    try:
        with service_client(settings) as client:
            setup.worker(setup.gateway(client)).run(stop)
    finally:
        server.shutdown()
        if metrics_server is not None:
            metrics_server.shutdown()


@dataclass
class Pulled:
    """What ``dicom pull`` did: each instance retrieved with the receiver's status for it, and the study's outcome
    (None when no instance was kept)."""

    statuses: list[tuple[str, int, str]]  # SOP Instance UID, status, comment
    outcome: StudyOutcome | None


PULL_PEER = "DICOMWEB-PULL"  # the peer named in the audit rows of pulled instances


def pull_study(settings: Settings, study: str, *, service: httpx.Client | None = None) -> Pulled:
    """``care-companion dicom pull --study UID``: retrieve a study from the PACS (``CARE_DICOM_PACS_URL``,
    WADO-RS), keep its instances as received ones (same checks, routing and audit) and send the study through the
    service now (``service``: a client of it; default one for ``CARE_DICOM_SERVICE_URL``); its results go to
    ``CARE_DICOM_RESULTS_DESTINATION`` when set.

    Raises:
        ConfigError: no PACS URL or no API key.
        PullError: the PACS cannot be asked or has no such study.
        ServiceDown: the service cannot answer (the study waits in the spool for ``dicom listen``).
    """
    if not settings.dicom_pacs_url:
        raise ConfigError("set CARE_DICOM_PACS_URL to the PACS's DICOMweb root to pull studies from it")
    setup = Setup.of(settings)
    with httpx.Client(base_url=settings.dicom_pacs_url.rstrip("/") + "/", timeout=120.0) as pacs:
        parts = retrieve_study(pacs, study)
    statuses = []
    for index, data in enumerate(parts):
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
        except Exception as exc:
            setup.receiver.note(Dataset(), UNREADABLE, PULL_PEER)
            statuses.append((f"part {index + 1}", UNREADABLE, f"not readable as DICOM: {exc}"))
            continue
        code, comment = setup.receiver.store(ds, PULL_PEER)
        statuses.append((str(ds.get("SOPInstanceUID", f"part {index + 1}")), code, comment))
    with nullcontext(service) if service is not None else service_client(settings) as client:
        worker = setup.worker(setup.gateway(client))
        outcome = None
        if study in setup.spool.studies():
            outcome = process_study(setup.spool, study, worker.gateway, setup.tasks, worker.results)
        worker.record_audit()
    return Pulled(statuses, outcome)
