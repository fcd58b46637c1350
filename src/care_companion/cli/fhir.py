"""``care-companion fhir``: send results to the hospital's FHIR server."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from care_companion.cli.common import console, err_console, friendly_errors, settings
from care_companion.errors import ConfigError

app = typer.Typer(help="FHIR: send results to the hospital's FHIR server.", no_args_is_help=True)


@app.command("push")
def push_cmd(
    every: Annotated[
        float | None, typer.Option("--every", min=1, help="Run again every this many seconds until Ctrl-C.")
    ] = None,
) -> None:
    """Send each result the FHIR server (CARE_FHIR_SERVER_URL) does not hold as it stands: new results, and
    results a radiologist's verdict changed, as one transaction each (Device, Observation, DiagnosticReport).
    A result the server did not take is sent on the next run."""
    import httpx

    from care_companion.interop.fhir_push import push_results
    from care_companion.records.db import check_migrated, make_engine, session_factory

    cfg = settings()
    failed_any = False
    with friendly_errors():
        if not cfg.fhir_server_url:
            raise ConfigError("set CARE_FHIR_SERVER_URL to the FHIR server's base URL to push results to it")
        token = cfg.fhir_server_token.get_secret_value() if cfg.fhir_server_token else None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        engine = make_engine(cfg.db_url)
        try:
            check_migrated(engine)
            sessions = session_factory(engine)
            with httpx.Client(base_url=cfg.fhir_server_url, headers=headers, timeout=30.0) as client:
                while True:
                    report = push_results(sessions, client, mrn_system=cfg.fhir_patient_system)
                    console.print(f"FHIR push to {cfg.fhir_server_url}: {len(report.pushed)} result(s) sent")
                    for prediction_id, why in report.failed:
                        err_console.print(f"[yellow]result {prediction_id} not sent:[/] {why}")
                    failed_any = bool(report.failed)
                    if every is None:
                        break
                    time.sleep(every)
        except KeyboardInterrupt:
            pass
        finally:
            engine.dispose()
    if failed_any:
        raise typer.Exit(1)
