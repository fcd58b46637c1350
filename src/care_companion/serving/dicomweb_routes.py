"""DICOM over HTTP. DICOMweb STOW-RS (``POST /dicomweb/studies``): systems that push over HTTP send DICOM
instances; each study is routed and predicted on as a DICOM C-STORE study or an upload is, under the same login
rules (a user who may upload and write records; the patient found by MRN or registered in the caller's
department). ``POST /v1/dicom/audit``: the DICOM receiver's audit rows (every instance received and sent)."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from care_companion.access.audit import record_dicom_events
from care_companion.errors import CareError
from care_companion.interop.dicom_gateway import patient_fields
from care_companion.interop.dicomweb import CANNOT_UNDERSTAND, DICOM_JSON, sort_instances, split_related, stow_response
from care_companion.records.schemas import DicomEvents, PatientBase
from care_companion.serving.deps import PredictorDep, RecordsDep, RequestId, SessionDep, Uploader, Writer
from care_companion.serving.predict import Upload
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
