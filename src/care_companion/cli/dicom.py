"""``care-companion dicom``: receive studies from modalities and the PACS over DICOM."""

from __future__ import annotations

import threading

import typer

from care_companion.cli.common import console, friendly_errors, settings

app = typer.Typer(help="DICOM: receive studies from modalities and the PACS (C-STORE).", no_args_is_help=True)


@app.command("listen")
def listen_cmd() -> None:
    """Receive studies over DICOM C-STORE and send each settled study through the service (settings:
    CARE_DICOM_*; see docs/guide/integration.md). Ctrl-C stops it; instances already acknowledged stay in the
    spool and are sent on the next start."""
    from care_companion.interop.dicom_listener import run_receiver

    cfg = settings()
    stop = threading.Event()
    console.print(
        f"DICOM receiver {cfg.dicom_ae_title} on port {cfg.dicom_port}, sending studies to {cfg.dicom_service_url} "
        f"after {cfg.dicom_settle_seconds:g} s of quiet; Ctrl-C stops it"
    )
    with friendly_errors():
        try:
            run_receiver(cfg, stop)
        except KeyboardInterrupt:
            stop.set()
