"""DICOM over HTTP. DICOMweb STOW-RS (``POST /dicomweb/studies``): systems that push over HTTP send DICOM
instances; each study is routed and predicted on as a DICOM C-STORE study or an upload is, under the same login
rules (a user who may upload and write records; the patient found by MRN or registered in the caller's
department). WADO-RS and QIDO-RS (``GET /dicomweb/studies/{uid}...``): our AI results of a DICOM study. ``POST
/v1/dicom/audit``: the DICOM receiver's audit rows (every instance received and sent)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel
from pydicom.dataset import Dataset

from care_companion.access.audit import record_dicom_events
from care_companion.errors import CareError
from care_companion.interop.dicom_gateway import patient_fields
from care_companion.interop.dicom_wado import instance_matches, series_matches, study_instances
from care_companion.interop.dicomweb import (
    CANNOT_UNDERSTAND,
    DICOM_JSON,
    DICOM_MEDIA_TYPE,
    related_body,
    sort_instances,
    split_related,
    stow_response,
)
from care_companion.records.repos import NotFound
from care_companion.records.schemas import DicomEvents, PatientBase
from care_companion.serving.deps import (
    PredictorDep,
    Reader,
    RecordsDep,
    RequestId,
    SessionDep,
    SettingsDep,
    StoreDep,
    Uploader,
    Writer,
)
from care_companion.serving.predict import Upload
from care_companion.serving.records_routes import RECORD_ERRORS
from care_companion.serving.routes import predict_and_keep, request_meta
from care_companion.serving.schemas import AUTH_ERRORS, error_doc
from care_companion.tasks import all_tasks

dicomweb_router = APIRouter(tags=["dicomweb"], responses=AUTH_ERRORS)


@dicomweb_router.post(
    "/dicomweb/studies",
    response_class=Response,
    summary="Store DICOM instances (STOW-RS) and predict on each study",
    responses={
        200: {"content": {DICOM_JSON: {}}, "description": "Every instance stored; results in the records."},
        202: {"content": {DICOM_JSON: {}}, "description": "Some instances refused (Failed SOP Sequence)."},
        409: {"content": {DICOM_JSON: {}}, "description": "No instance stored."},
        415: error_doc("Not multipart/related DICOM."),
    },
    openapi_extra={"requestBody": {"required": True, "content": {'multipart/related; type="application/dicom"': {}}}},
)
async def stow(request: Request, predictor: PredictorDep, records: RecordsDep, user: Uploader) -> Response:
    """Each study in the body is predicted on with the films of its views (``BodyPartExamined`` and
    ``ViewPosition`` route them, as for the DICOM receiver) and kept under its patient; an instance no task reads,
    without pixel data or unreadable is listed in the Failed SOP Sequence, never guessed at."""
    parts = split_related(request.headers.get("content-type", ""), await request.body())
    sorted_ = sort_instances(parts, all_tasks())
    failed = list(sorted_.failed)
    stored = []
    request_id, started = request_meta(request)
    for study in sorted_.studies.values():
        task, header = study.task, study.header
        try:
            patient_in = PatientBase(**patient_fields(header), department=user.department or "-")
            patient = await records.patient_for(user, patient_in, request_id=request_id)
            caller = await records.authorise(user, None, task.name, patient_id=patient)
            uploads = {view: Upload(name, data) for view, (name, data, _) in study.views.items()}
            result = await predict_and_keep(
                task, uploads, predictor, records, caller, request_id=request_id, started=started
            )
            stored += [ds for view, (_, _, ds) in study.views.items() if view in result.views_used]
        except (CareError, ValueError) as exc:
            reason = getattr(exc, "detail", str(exc))
            failed += [
                (str(ds.get("SOPClassUID", "")), str(ds.SOPInstanceUID), CANNOT_UNDERSTAND, reason)
                for _, _, ds in study.views.values()
            ]
    status = 200 if not failed else (202 if stored else 409)
    return Response(json.dumps(stow_response(stored, failed)), status_code=status, media_type=DICOM_JSON)


class AuditRecorded(BaseModel):
    """How many audit rows were written."""

    recorded: int


@dicomweb_router.post("/v1/dicom/audit", response_model=AuditRecorded, status_code=201)
def dicom_audit(body: DicomEvents, session: SessionDep, user: Writer, request_id: RequestId) -> AuditRecorded:
    """The DICOM receiver's events, one audit row each: an instance received (``dicom.received``, with the status
    it was answered) or a result instance sent to the PACS (``dicom.sent``), under the receiver's login."""
    return AuditRecorded(recorded=record_dicom_events(session, user, body.events, request_id=request_id))


DICOM_UID = Path(pattern=r"^[0-9.]{1,64}$", description="A DICOM UID.")
WADO_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {f'multipart/related; type="{DICOM_MEDIA_TYPE}"': {}},
        "description": "DICOM instances (Part 10 files), one per part.",
    },
    **RECORD_ERRORS,
}
QIDO_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {"content": {DICOM_JSON: {}}, "description": "DICOM JSON, one object per match."},
    **RECORD_ERRORS,
}


def study_results(
    study_uid: Annotated[str, DICOM_UID],
    session: SessionDep,
    user: Reader,
    store: StoreDep,
    settings: SettingsDep,
    request_id: RequestId,
) -> list[Dataset]:
    """Our result instances of the study in the path (:func:`~care_companion.interop.dicom_wado.study_instances`)."""
    return study_instances(
        session=session, user=user, store=store, settings=settings, study_uid=study_uid, request_id=request_id
    )


StudyResults = Annotated[list[Dataset], Depends(study_results)]


def _wado(instances: list[Dataset]) -> Response:
    body, content_type = related_body(instances)
    return Response(body, media_type=content_type, headers={"Cache-Control": "private, no-store"})


def _qido(matches: list[dict[str, Any]]) -> Response:
    return Response(json.dumps(matches), media_type=DICOM_JSON, headers={"Cache-Control": "private, no-store"})


def _in_series(instances: list[Dataset], series_uid: str, sop_uid: str | None = None) -> list[Dataset]:
    found = [
        ds
        for ds in instances
        if ds.SeriesInstanceUID == series_uid and (sop_uid is None or ds.SOPInstanceUID == sop_uid)
    ]
    if not found:
        raise NotFound(f"{'instance ' + sop_uid + ' of ' if sop_uid else ''}series {series_uid} not found")
    return found


@dicomweb_router.get(
    "/dicomweb/studies/{study_uid}",
    response_class=Response,
    responses=WADO_ANSWER,
    summary="Our AI results of a DICOM study (WADO-RS)",
)
def retrieve_study(instances: StudyResults) -> Response:
    """Every AI result of the study with this StudyInstanceUID (films uploaded as DICOM, in studies you see): each
    result's Structured Report as it stands (verified and superseding the earlier ones after a radiologist's
    verdict) and a heat-map Secondary Capture per view read. Not the films: the PACS keeps those."""
    return _wado(instances)


@dicomweb_router.get(
    "/dicomweb/studies/{study_uid}/series",
    response_class=Response,
    responses=QIDO_ANSWER,
    summary="The series of our AI results of a DICOM study (QIDO-RS)",
)
def search_series(instances: StudyResults) -> Response:
    """One DICOM JSON object per series of :func:`retrieve_study` (UIDs, modality, number, description, count)."""
    return _qido(series_matches(instances))


@dicomweb_router.get(
    "/dicomweb/studies/{study_uid}/series/{series_uid}",
    response_class=Response,
    responses=WADO_ANSWER,
    summary="A series of our AI results (WADO-RS)",
)
def retrieve_series(series_uid: Annotated[str, DICOM_UID], instances: StudyResults) -> Response:
    """The instances of one series of :func:`retrieve_study`."""
    return _wado(_in_series(instances, series_uid))


@dicomweb_router.get(
    "/dicomweb/studies/{study_uid}/series/{series_uid}/instances",
    response_class=Response,
    responses=QIDO_ANSWER,
    summary="The instances of a series of our AI results (QIDO-RS)",
)
def search_instances(series_uid: Annotated[str, DICOM_UID], instances: StudyResults) -> Response:
    """One DICOM JSON object per instance of the series (SOP class and instance UIDs, number)."""
    return _qido(instance_matches(_in_series(instances, series_uid)))


@dicomweb_router.get(
    "/dicomweb/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}",
    response_class=Response,
    responses=WADO_ANSWER,
    summary="One AI result instance (WADO-RS)",
)
def retrieve_instance(
    series_uid: Annotated[str, DICOM_UID], sop_uid: Annotated[str, DICOM_UID], instances: StudyResults
) -> Response:
    """One SR or Secondary Capture of :func:`retrieve_study`, by its series and instance UIDs."""
    return _wado(_in_series(instances, series_uid, sop_uid))
