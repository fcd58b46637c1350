"""A settled DICOM study through the service's own API, as an upload would go: the patient matched or registered
by ``PatientID`` in the department of the receiver's API key, one prediction per study with each view's film,
so records, object store, monitoring and audit see it as they see an upload.

The service answers over HTTP; a refusal (4xx: not the task's body part, a bad film) is final and logged with the
study, while a service that cannot answer (connection error, 5xx, 503) leaves the study in the spool to be
tried again.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pydicom
from pydicom.dataset import Dataset

from care_companion.imaging.decode import decode_image
from care_companion.interop.dicom_inbox import Spool, Unroutable, route
from care_companion.interop.dicom_results import ResultsSink, SentReport, answer_result, result_instances
from care_companion.interop.dicom_sr import result_sr
from care_companion.interop.fhir import Verdict, result_status
from care_companion.records.schemas import DicomEvent
from care_companion.tasks import TaskSpec, get_task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Film:
    """A spooled instance, read once: its file name, bytes and data set."""

    name: str
    data: bytes
    ds: Dataset

    @classmethod
    def read(cls, path: Path) -> Film:
        """The instance in ``path``."""
        data = path.read_bytes()
        return cls(path.name, data, pydicom.dcmread(io.BytesIO(data)))


class ServiceDown(Exception):
    """The service could not answer now; the study stays in the spool."""


@dataclass
class StudyOutcome:
    """What became of one settled study."""

    study_uid: str
    task: str | None = None
    status: int | None = None  # the service's HTTP status for the prediction
    answer: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    results_sent: int = 0  # result instances (SR, Secondary Captures) sent to the PACS now


def mrn_of(ds: Dataset) -> str:
    """The record number a DICOM patient is filed under: ``PatientID``, with ``^issuer`` when an issuer is given.

    Raises:
        Unroutable: no ``PatientID``.
    """
    patient = str(ds.get("PatientID", "") or "").strip()
    if not patient:
        raise Unroutable("no PatientID: the study cannot be filed under a patient")
    issuer = str(ds.get("IssuerOfPatientID", "") or "").strip()
    return f"{patient}^{issuer}" if issuer else patient


def patient_fields(ds: Dataset) -> dict[str, Any]:
    """A new patient's record from a DICOM header: MRN (:func:`mrn_of`), name, sex and birth date when given.

    Raises:
        Unroutable: no ``PatientID``.
    """
    mrn = mrn_of(ds)
    name = str(ds.get("PatientName", "") or "").replace("^", " ").strip() or f"DICOM patient {mrn}"
    fields: dict[str, Any] = {"mrn": mrn, "name": name, "sex": _sex(ds)}
    birth = str(ds.get("PatientBirthDate", "") or "")
    if len(birth) == 8 and birth.isdigit():
        fields["birth_date"] = f"{birth[:4]}-{birth[4:6]}-{birth[6:]}"
    return fields


class ServiceGateway:
    """The service's HTTP API as the DICOM receiver uses it (an ``httpx.Client`` with the service's base URL)."""

    def __init__(self, client: httpx.Client, api_key: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {api_key}"}

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.client.request(method, path, headers=self.headers, **kwargs)
        except httpx.HTTPError as exc:
            raise ServiceDown(f"{method} {path}: {exc}") from exc
        if response.status_code >= 500:
            raise ServiceDown(f"{method} {path}: HTTP {response.status_code} {response.text[:200]}")
        return response

    def patient_id(self, ds: Dataset) -> int:
        """The service's id of the study's patient: found by exact MRN, else registered from the DICOM header, in
        one request (``POST /v1/patients/match``; asked again once when a concurrent registration won the race).

        Raises:
            Unroutable: no PatientID, or the MRN belongs to a patient the key's department cannot see.
            ServiceDown: the service could not answer.
        """
        body = patient_fields(ds)
        for _attempt in range(2):
            answer = self._call("POST", "/v1/patients/match", json=body)
            if answer.status_code in (200, 201):
                return int(answer.json()["id"])
            if answer.status_code != 409:
                break
        raise Unroutable(f"patient {body['mrn']}: the service answered {answer.status_code} {answer.text[:200]}")

    def record_events(self, events: list[DicomEvent]) -> None:
        """Have the service write an audit row for each event.

        Raises:
            ServiceDown: the service could not answer, or did not record them (they wait for a later round).
        """
        body = {"events": [event.model_dump(mode="json") for event in events]}
        response = self._call("POST", "/v1/dicom/audit", json=body)
        if response.status_code != 201:
            raise ServiceDown(f"audit events not recorded: HTTP {response.status_code} {response.text[:200]}")

    def verdicts(self, study_id: int, prediction_id: int) -> list[Verdict]:
        """The radiologists' verdicts on a result, oldest first."""
        response = self._call("GET", f"/v1/studies/{study_id}/feedback", params={"limit": 500})
        rows = response.json().get("data", []) if response.status_code == 200 else []
        return [
            Verdict(
                row["true_label"],
                bool(row["agrees"]),
                datetime.fromisoformat(row["created_at"]),
                row.get("comment", ""),
            )
            for row in rows
            if row.get("prediction_id") in (prediction_id, None)
        ]

    def heatmap_png(self, prediction_id: int, view: str) -> bytes | None:
        """A stored prediction's heat map of one view (PNG), or None when it has none."""
        response = self._call("GET", f"/v1/predictions/{prediction_id}/heatmap/{view}.png")
        return response.content if response.status_code == 200 else None

    def predict(self, task: TaskSpec, films: dict[str, Film], patient_id: int) -> httpx.Response:
        """One prediction of ``task`` on the study's films (by view), filed under the patient."""
        fields = task.upload_fields
        files = {
            (view if task.multiview else fields[0]): (film.name, film.data, "application/dicom")
            for view, film in films.items()
        }
        return self._call("POST", f"/v1/predict/{task.name}", files=files, data={"patient_id": str(patient_id)})


def process_study(
    spool: Spool, study: str, gateway: ServiceGateway, tasks: list[TaskSpec], results: ResultsSink | None = None
) -> StudyOutcome:
    """Predict on a settled study through the service and move it to ``done/``; a study the service could not
    take now stays (:class:`ServiceDown` is raised). With ``results``, the study's SR and heat-map Secondary
    Captures go to the PACS (through the outbox)."""
    outcome = StudyOutcome(study_uid=study)
    films: dict[str, Film] = {}
    task: TaskSpec | None = None
    for path in spool.instances(study):
        film = Film.read(path)
        routed = route(film.ds, tasks)
        if task is not None and routed.task.name != task.name:
            outcome.problems.append(f"{path.name}: {routed.task.name}, not {task.name}; left out")
            continue
        task = routed.task
        if routed.view in films:
            outcome.problems.append(f"{path.name}: a second {routed.view} film; the first is used")
            continue
        films[routed.view] = film
    if task is None:
        spool.finish(study)
        return outcome
    outcome.task = task.name
    missing = [v for v in task.views if v not in films]
    if missing:
        outcome.problems.append(f"missing view(s) {', '.join(missing)}: predicted on what arrived")
    first = next(iter(films.values())).ds
    try:
        patient = gateway.patient_id(first)
    except Unroutable as exc:
        outcome.problems.append(str(exc))
        spool.finish(study)
        return outcome
    response = gateway.predict(task, films, patient)
    outcome.status = response.status_code
    outcome.answer = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    if response.status_code != 200:
        outcome.problems.append(f"the service refused the study: {response.status_code} {outcome.answer}")
    elif results is not None:
        outcome.results_sent = _deliver(results, gateway, task, films, outcome.answer, mrn_of(first), study)
    log.info("DICOM study %s (%s): %s %s", study, task.name, response.status_code, "; ".join(outcome.problems))
    spool.finish(study)
    return outcome


def _deliver(
    results: ResultsSink,
    gateway: ServiceGateway,
    task: TaskSpec,
    films: dict[str, Film],
    answer: dict[str, Any],
    mrn: str,
    study_uid: str,
) -> int:
    """Build the study's SR and heat-map Secondary Captures, hand them to ``results`` and note the SR as sent
    (to be superseded after a verdict: :func:`follow_verdicts`)."""
    sources = {view: film.ds for view, film in films.items()}
    pixels = {view: decode_image(film.data, name=film.name) for view, film in films.items()}
    prediction = int(answer.get("prediction_id") or 0)
    instances = result_instances(
        answer_result(answer, task, mrn),
        sources,
        pixels,
        lambda view: gateway.heatmap_png(prediction, view) if prediction else None,
    )
    sent = results.deliver(instances)
    if prediction and results.sent is not None:
        report = SentReport(prediction, int(answer.get("study_id") or 0), study_uid, task.name, mrn, answer, "")
        results.sent.record(report, instances[0])
    return sent


def follow_verdicts(spool: Spool, gateway: ServiceGateway, results: ResultsSink, *, follow_days: float = 14.0) -> int:
    """For each SR sent whose result has more radiologists' verdicts than that SR shows, send a new SR that
    supersedes it: verified, with the latest reading (the first verdict makes the result final, a later one that
    changes the label amends it, and each such verdict gets its own SR). The study's source instances come from
    ``done/``; reports sent more than ``follow_days`` ago are no longer followed. Returns how many SRs were sent."""
    if results.sent is None:
        return 0
    superseded = 0
    for report in results.sent.followed(follow_days):
        verdicts = gateway.verdicts(report.study_id, report.prediction_id)
        if len(verdicts) <= report.verdicts:
            continue
        result = replace(answer_result(report.answer, get_task(report.task), report.mrn), verdicts=verdicts)
        sources = [pydicom.dcmread(path) for path in sorted((spool.done / report.study_uid).glob("*.dcm"))]
        sr = result_sr(result, sources, previous=pydicom.dcmread(report.sr_file))
        results.deliver([sr])
        report.status, report.verdicts = result_status(verdicts), len(verdicts)
        results.sent.record(report, sr)
        superseded += 1
    return superseded


def _sex(ds: Dataset) -> str:
    sex = str(ds.get("PatientSex", "") or "").strip().upper()
    return sex if sex in ("M", "F", "O") else "U"
