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

Associations from calling AE titles outside ``CARE_DICOM_ALLOWED_CALLING`` (when set) are rejected; at most
``CARE_DICOM_MAX_ASSOCIATIONS`` at once. A handler never raises: whatever an instance holds, the sender gets a
status and the server keeps serving.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from care_companion.config import Settings
from care_companion.errors import ConfigError
from care_companion.imaging.decode import has_pixel_data
from care_companion.interop.dicom_gateway import (
    ServiceDown,
    ServiceGateway,
    StudyOutcome,
    follow_verdicts,
    process_study,
)
from care_companion.interop.dicom_inbox import Spool, Unroutable, instance_uid, route, study_uid
from care_companion.interop.dicom_results import Destination, Outbox, ResultsSink, SentReports
from care_companion.tasks import TaskSpec

log = logging.getLogger(__name__)

NO_PIXEL_DATA, UNROUTABLE, TOO_LARGE, BAD_UID, OUT_OF_RESOURCES = 0xC210, 0xC211, 0xC212, 0xC213, 0xA700


@dataclass
class Receiver:
    """What the C-STORE handler needs: the spool, the tasks to route to and the pixel limit."""

    spool: Spool
    tasks: list[TaskSpec]
    max_pixels: int
    received: list[str] = field(default_factory=list)  # SOP Instance UIDs acknowledged, in order

    def store(self, ds: Dataset) -> tuple[int, str]:
        """Check, route and keep one instance; the DICOM status and a comment for the sender."""
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
) -> Any:
    """Start the C-STORE server in background threads; returns the pynetdicom server (``shutdown()`` stops it)."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    def on_store(event: Any) -> Dataset:
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            return status(*receiver.store(ds))
        except Exception as exc:  # a handler must answer: a broken instance is the sender's failure, not ours
            log.warning("unreadable DICOM instance: %s", exc)
            return status(0xC000, f"cannot understand: {exc}")

    ae = AE(ae_title=ae_title)
    ae.maximum_associations = max_associations
    ae.require_calling_aet = list(allowed_calling)
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(Verification)
    return ae.start_server((host, port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])


def run_worker(
    spool: Spool,
    gateway: ServiceGateway,
    tasks: list[TaskSpec],
    *,
    settle_seconds: float,
    stop: threading.Event,
    poll_seconds: float = 1.0,
    on_outcome: Callable[[StudyOutcome], None] | None = None,
    results: ResultsSink | None = None,
) -> None:
    """Send each settled study through the service until ``stop`` is set; a study the service cannot take now
    is tried again on a later round, and so are results the PACS did not take."""
    while not stop.is_set():
        if results is not None:
            results.retry()
            try:
                follow_verdicts(spool, gateway, results)
            except ServiceDown as exc:
                log.warning("verdicts not followed now: %s", exc)
        for study in spool.settled(settle_seconds):
            try:
                outcome = process_study(spool, study, gateway, tasks, results)
            except ServiceDown as exc:
                log.warning("DICOM study %s waits: %s", study, exc)
                break
            except Exception:  # one bad study must not stop the others
                log.exception("DICOM study %s failed", study)
                continue
            if on_outcome is not None:
                on_outcome(outcome)
        stop.wait(poll_seconds)


def run_receiver(settings: Settings, stop: threading.Event) -> None:
    """``care-companion dicom listen``: the C-STORE server on ``CARE_DICOM_PORT`` and the worker that sends settled
    studies to the service at ``CARE_DICOM_SERVICE_URL`` with ``CARE_DICOM_API_KEY``, until ``stop`` is set.

    Raises:
        ConfigError: no API key for the service.
    """
    import httpx

    from care_companion.tasks import all_tasks

    if settings.dicom_api_key is None:
        raise ConfigError("set CARE_DICOM_API_KEY: the receiver files studies through the service as a technician")
    spool = Spool(settings.data_dir / "dicom-spool")
    swept = spool.sweep_partials()
    if swept:
        log.info("removed %d partly written instances (never acknowledged)", swept)
    tasks = all_tasks()
    receiver = Receiver(spool=spool, tasks=tasks, max_pixels=settings.max_image_pixels)
    server = start_listener(
        receiver,
        port=settings.dicom_port,
        ae_title=settings.dicom_ae_title,
        allowed_calling=settings.dicom_allowed_calling,
        max_associations=settings.dicom_max_associations,
    )
    try:
        with httpx.Client(base_url=settings.dicom_service_url, timeout=60.0) as client:
            gateway = ServiceGateway(client, settings.dicom_api_key.get_secret_value())
            results = None
            if settings.dicom_results_destination:
                results = ResultsSink(
                    Outbox(spool.root / "outbox"),
                    Destination.parse(settings.dicom_results_destination),
                    settings.dicom_ae_title,
                    SentReports(spool.root / "sent"),
                )
            run_worker(spool, gateway, tasks, settle_seconds=settings.dicom_settle_seconds, stop=stop, results=results)
    finally:
        server.shutdown()
