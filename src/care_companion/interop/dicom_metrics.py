"""Prometheus metrics of the DICOM receiver (``care-companion dicom listen``), in a registry of their own, served
on ``CARE_DICOM_METRICS_PORT``: instances received by status, studies by outcome, result instances sent and
failed sends, and what waits (studies in the spool, results in the outbox, audit events not yet recorded)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

# The receiver's C-STORE statuses by name, as the metric labels them.
STATUS_NAMES = {
    0x0000: "kept",
    0xC210: "no_pixel_data",
    0xC211: "unroutable",
    0xC212: "too_large",
    0xC213: "bad_uid",
    0xA700: "out_of_resources",
    0xC000: "unreadable",
}


class ReceiverMetrics:
    """Every metric the DICOM receiver exposes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.instances = Counter(
            "care_dicom_instances_received", "DICOM instances received, by the status answered.", ["status"], registry=r
        )
        self.studies = Counter(
            "care_dicom_studies",
            "Settled studies sent to the service, by task and outcome.",
            ["task", "outcome"],
            registry=r,
        )
        self.results_sent = Counter("care_dicom_results_sent", "Result instances (SR, SC) the PACS took.", registry=r)
        self.send_failures = Counter(
            "care_dicom_result_send_failures", "Rounds on which the PACS could not take a result.", registry=r
        )
        self.outbox_pending = Gauge("care_dicom_outbox_pending", "Result instances waiting in the outbox.", registry=r)
        self.studies_waiting = Gauge("care_dicom_studies_waiting", "Received studies not yet predicted on.", registry=r)
        self.audit_pending = Gauge(
            "care_dicom_audit_pending", "Audit events of received and sent instances not yet recorded.", registry=r
        )

    def received(self, status: int) -> None:
        """Count an instance answered with ``status``."""
        self.instances.labels(STATUS_NAMES.get(status, f"0x{status:04X}")).inc()

    def study(self, task: str | None, outcome: str) -> None:
        """Count a settled study: ``predicted``, ``refused`` (the service said no) or ``unfiled``."""
        self.studies.labels(task or "none", outcome).inc()

    def serve(self, port: int, host: str = "0.0.0.0") -> Any:
        """Serve ``/metrics`` on ``port`` in a background thread; returns the server (``shutdown()`` stops it)."""
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server
