"""``care-companion release``: move a model through staging, canary and production on evidence."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from care_companion.release.report import Rate, ReleaseReport

from care_companion.cli.common import TaskOpt, console, friendly_errors, settings

app = typer.Typer(help="Release: staging -> canary -> production on evidence, and rollback.", no_args_is_help=True)


def _sessions() -> tuple[Engine, sessionmaker[Session]]:
    """The records database's engine (migrated, or a clear error) and its sessions."""
    from care_companion.records.db import check_migrated, make_engine, session_factory

    engine = make_engine(settings().db_url)
    check_migrated(engine)
    return engine, session_factory(engine)


@app.command("promote")
def promote_cmd(
    version: Annotated[int | None, typer.Option(help="Model version to move.")] = None,
    to: Annotated[str | None, typer.Option("--to", help="staging, canary or production (in that order).")] = None,
    auto: Annotated[
        bool, typer.Option("--auto", help="Apply the canary report's rule instead: promote, end the canary, or wait.")
    ] = False,
    task: TaskOpt = "chest",
) -> None:
    """Move a version one step: to staging (it passed the gate when registered), to canary only from staging,
    to production only from canary and only when the canary report says promote (enough radiologist-confirmed
    canary studies, no sensitivity, error-rate or latency regression; see release status). With --auto, apply
    that rule to the current canary (for a schedule): promote it, end it when it is worse, or wait. Audited."""
    from care_companion.release.promotion import auto as auto_release
    from care_companion.release.promotion import promote

    if not auto and (version is None or to is None):
        raise typer.BadParameter("give --version and --to, or --auto")
    with friendly_errors():
        engine, sessions = _sessions()
        try:
            if auto:
                report, moved = auto_release(task, settings(), sessions)
            else:
                assert version is not None and to is not None
                decision = promote(task, version, to, settings(), sessions)
        finally:
            engine.dispose()
    if auto:
        if moved is None:
            what = "nothing moved"
        elif report.verdict == "rollback":
            what = f"canary (version {moved.version}) ended; production keeps serving"
        else:
            what = f"{task}@production -> version {moved.version}"
        console.print(f"{task}: verdict {report.verdict}: {what}")
        for reason in report.reasons:
            console.print(f"  {reason}")
        return
    console.print(f"{task}@{to} -> version {version}")
    for name, figures in decision.evidence.items():
        console.print(f"  {name}: {figures}")


@app.command("status")
def status_cmd(
    task: TaskOpt = "chest",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """The canary report: production and the canary over the canary window (sensitivity and specificity from
    radiologists' verdicts with 95% intervals, agreement on shadowed films, error rate, p95 latency, drift checks)
    and the decision rule's verdict."""
    from care_companion.release.report import release_report

    with friendly_errors():
        engine, sessions = _sessions()
        try:
            report = release_report(task, settings(), sessions)
        finally:
            engine.dispose()
    if as_json:
        console.print_json(report.model_dump_json())
        return
    print_report(report)


def _rate(rate: Rate) -> str:
    if rate.value is None:
        return "-"
    return f"{rate.value:.3f} ({rate.hits}/{rate.total}; {rate.low:.2f}-{rate.high:.2f})"


def _drift(drifted: bool | None) -> str:
    return "-" if drifted is None else "drifted" if drifted else "no drift"


def print_report(report: ReleaseReport) -> None:
    """The report as a table and the verdict with its reasons."""
    from rich.table import Table

    window = f"since {report.since}" if report.since else "all time"
    table = Table(title=f"{report.task}: canary report ({window}; {report.mode}, {report.canary_percent:g}%)")
    versions = [v for v in (report.production, report.canary) if v is not None]
    table.add_column("")
    for v in versions:
        table.add_column(f"{v.alias} (version {v.version})")
    rows = {
        "confirmed studies": [f"{v.confirmed_studies} ({v.shadowed_studies} shadowed)" for v in versions],
        "sensitivity (95% CI)": [_rate(v.sensitivity) for v in versions],
        "specificity (95% CI)": [_rate(v.specificity) for v in versions],
        "requests (refused)": [f"{v.requests} ({v.refused})" for v in versions],
        "error rate (95% CI)": [_rate(v.error_rate) for v in versions],
        "p95 latency (ms)": [f"{v.latency_ms_p95:.1f}" if v.latency_ms_p95 is not None else "-" for v in versions],
        "drift checks (drifted)": [
            f"{v.drift_checks} ({v.drifted_checks}); latest {_drift(v.latest_drift)}" for v in versions
        ],
    }
    for name, cells in rows.items():
        table.add_row(name, *cells)
    console.print(table)
    if report.agreement is not None:
        a = report.agreement
        console.print(
            f"agreement on {a.films} shadowed films: label {_rate(a.same_label)}, decision {_rate(a.same_decision)}, "
            f"canary would have refused {a.canary_refused}"
        )
    console.print(f"verdict: [bold]{report.verdict}[/bold]")
    for reason in report.reasons:
        console.print(f"  {reason}")


@app.command("rollback")
def rollback_cmd(task: TaskOpt = "chest") -> None:
    """Move production back to the version it pointed at before its last promotion (one step; audited). The
    service follows within CARE_MODEL_POLL_SECONDS, or at once on POST /v1/admin/reload."""
    from care_companion.release.promotion import rollback

    with friendly_errors():
        engine, sessions = _sessions()
        try:
            decision = rollback(task, settings(), sessions)
        finally:
            engine.dispose()
    console.print(f"{task}@production -> version {decision.version} (was {decision.evidence.get('from')})")
