"""Results to a FHIR server (``CARE_FHIR_SERVER_URL``): each stored result of a study is sent as one FHIR
transaction (a Bundle that PUTs its Device, Observation and DiagnosticReport under the ids the service's own FHIR
routes use), so the server holds each result whole or not at all, and sending it again changes nothing. A result
is sent when new and again when a radiologist's verdict changed it (``preliminary`` → ``final`` → ``amended``);
what the server was last sent is kept in the records (``fhir_pushes``), so an unreachable server or a refused
bundle leaves the result to be sent on the next run. ``care-companion fhir push`` runs it (once, or every N s)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy.orm import Session, sessionmaker

from care_companion.access.audit import audit
from care_companion.interop.fhir import (
    FHIR_MEDIA_TYPE,
    AiResult,
    ai_result,
    device,
    device_id,
    diagnostic_report,
    observation,
    result_status,
)
from care_companion.records.repos import MAX_LIMIT, get_study, list_feedback, mark_pushed, results_to_push

log = logging.getLogger(__name__)


@dataclass
class PushReport:
    """What one run sent: the prediction ids the server took, and those it did not (with why)."""

    pushed: list[int] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)


def result_bundle(result: AiResult, base_url: str) -> dict[str, Any]:
    """A FHIR R4B transaction Bundle (validated) that PUTs the result's Device, Observation and DiagnosticReport."""
    from fhir.resources.R4B.bundle import Bundle

    resources = [
        device(result.model_name, result.model_version),
        observation(result),
        diagnostic_report(result),
    ]
    base = base_url.rstrip("/")
    entries = [
        {
            "fullUrl": f"{base}/{r['resourceType']}/{r['id']}",
            "resource": r,
            "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
        }
        for r in resources
    ]
    return dict(
        Bundle.model_validate({"resourceType": "Bundle", "type": "transaction", "entry": entries}).model_dump(
            mode="json", exclude_none=True
        )
    )


def push_results(
    sessions: sessionmaker[Session], client: httpx.Client, *, mrn_system: str, limit: int = MAX_LIMIT
) -> PushReport:
    """Send each result the server does not hold as it stands (oldest first, at most ``limit``) through ``client``
    (base URL: the FHIR server's); stops at the first result the server cannot be reached for."""
    with sessions() as session:
        items: list[tuple[AiResult, int]] = []
        for prediction, _count in results_to_push(session=session, limit=limit):
            assert prediction.study_id is not None  # results_to_push takes predictions of studies only
            study = get_study(session=session, study_id=prediction.study_id)
            rows, _ = list_feedback(session=session, study_id=study.id, limit=MAX_LIMIT)
            verdicts = [f for f in rows if f.prediction_id in (prediction.id, None)]
            items.append((ai_result(prediction, study, verdicts, mrn_system=mrn_system), len(verdicts)))
    report = PushReport()
    for result, count in items:
        bundle = result_bundle(result, str(client.base_url))
        try:
            response = client.post("", json=bundle, headers={"Content-Type": FHIR_MEDIA_TYPE})
        except httpx.HTTPError as exc:
            report.failed.append((result.prediction_id, f"FHIR server not reached: {exc}"))
            log.warning("FHIR server not reached; %d results wait: %s", len(items) - len(report.pushed), exc)
            break
        if response.status_code not in (200, 201):
            report.failed.append((result.prediction_id, f"HTTP {response.status_code} {response.text[:200]}"))
            continue
        status = result_status(result.verdicts)
        with sessions() as session, session.begin():
            mark_pushed(session=session, prediction_id=result.prediction_id, verdicts=count, status=status)
            audit(
                session,
                None,
                "fhir.push",
                "prediction",
                result.prediction_id,
                server=client.base_url.host,
                status=status,
                device=device_id(result.model_name, result.model_version),
            )
        report.pushed.append(result.prediction_id)
    return report
