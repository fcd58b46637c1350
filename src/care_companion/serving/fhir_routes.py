"""AI results as FHIR R4B resources (``application/fhir+json``): thin routes over :mod:`care_companion.interop.fhir`.

A DiagnosticReport and its Observation per stored prediction (same id), under the prediction's study's
department rules, each read audited; the model version as a Device.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import APIRouter, Response

from care_companion.access import patients
from care_companion.interop import fhir
from care_companion.records.repos import NotFound, model_versions
from care_companion.serving.deps import Reader, RequestId, SessionDep, SettingsDep
from care_companion.serving.records_routes import RECORD_ERRORS

FHIR_RESOURCE: dict[int | str, dict[str, Any]] = {
    200: {"content": {fhir.FHIR_MEDIA_TYPE: {"schema": {"type": "object"}}}, "description": "A FHIR R4B resource."}
}

fhir_router = APIRouter(tags=["fhir"], responses=RECORD_ERRORS)


def _fhir(resource: dict[str, Any]) -> Response:
    return Response(json.dumps(resource), media_type=fhir.FHIR_MEDIA_TYPE, headers={"Cache-Control": "no-store"})


@fhir_router.get(
    "/fhir/Device/{device_id}", response_class=Response, responses=FHIR_RESOURCE, summary="A model version as a Device"
)
def read_device(device_id: str, session: SessionDep, user: Reader) -> Response:
    """A model version that answered a stored prediction (the id an Observation's ``device`` names)."""
    for name, version in model_versions(session=session):
        if fhir.device_id(name, version) == device_id:
            return _fhir(fhir.device(name, version))
    raise NotFound(f"device {device_id} not found")


BUILDERS = {"DiagnosticReport": fhir.diagnostic_report, "Observation": fhir.observation}


@fhir_router.get(
    "/fhir/{resource_type}/{prediction_id}",
    response_class=Response,
    responses=FHIR_RESOURCE,
    summary="A result as a FHIR DiagnosticReport or its AI finding as an Observation",
)
def read_result(
    resource_type: Literal["DiagnosticReport", "Observation"],
    prediction_id: int,
    session: SessionDep,
    user: Reader,
    settings: SettingsDep,
    request_id: RequestId,
) -> Response:
    """A stored prediction as a ``DiagnosticReport`` (``preliminary``, the AI's answer and the review warning,
    until a radiologist's verdict; then ``final`` with their reading, ``amended`` when a later verdict changed it)
    or as an ``Observation`` (the decided class, SNOMED CT where the task codes it, each class's calibrated
    probability and the operating point, the model as its device)."""
    prediction, study, verdicts = patients.prediction_record(
        session=session, user=user, prediction_id=prediction_id, request_id=request_id
    )
    result = fhir.ai_result(prediction, study, verdicts, mrn_system=settings.fhir_patient_system)
    return _fhir(BUILDERS[resource_type](result))
