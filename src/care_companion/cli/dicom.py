"""``care-companion dicom``: receive studies from modalities and the PACS over DICOM."""

from __future__ import annotations

import threading
from typing import Annotated

import typer

from care_companion.cli.common import console, err_console, friendly_errors, settings

app = typer.Typer(
    help="DICOM: receive studies from modalities and the PACS (C-STORE), pull them from it (WADO-RS).",
    no_args_is_help=True,
)


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


@app.command("pull")
def pull_cmd(
    study: Annotated[str, typer.Option("--study", help="The StudyInstanceUID of a study in the PACS.")],
) -> None:
    """Read a study already in the PACS again: retrieve it over DICOMweb WADO-RS (CARE_DICOM_PACS_URL), check and
    route its instances as received ones, and send it through the service now (results to
    CARE_DICOM_RESULTS_DESTINATION when set)."""
    from care_companion.interop.dicom_gateway import ServiceDown
    from care_companion.interop.dicom_listener import pull_study

    with friendly_errors():
        try:
            pulled = pull_study(settings(), study)
        except ServiceDown as exc:
            err_console.print(f"[bold red]error (service_unavailable):[/] {exc}; the study waits in the spool")
            raise typer.Exit(1) from None
    for sop, code, comment in pulled.statuses:
        console.print(f"{sop}: {'kept' if code == 0 else f'0x{code:04X} {comment}'}")
    outcome = pulled.outcome
    if outcome is None:
        err_console.print(f"[bold red]error (nothing_to_read):[/] no instance of study {study} is a film a task reads")
        raise typer.Exit(1)
    answer = outcome.answer
    if outcome.status == 200:
        console.print(
            f"study {study} ({outcome.task}): {answer.get('label')} "
            f"(prediction {answer.get('prediction_id')}), {outcome.results_sent} result instance(s) sent to the PACS"
        )
    for problem in outcome.problems:
        console.print(f"[yellow]note:[/] {problem}")
    if outcome.status != 200:
        raise typer.Exit(1)
