"""HTTP routes: thin shells that parse uploads and call :class:`care_companion.serving.predict.Predictor`."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from care_companion.errors import RequestError
from care_companion.monitoring.metrics import ServiceMetrics
from care_companion.security import Permission
from care_companion.serving.auth import AUTH_ERRORS, Uploader, require_briefly
from care_companion.serving.engine import ServedModel
from care_companion.serving.manager import ModelManager
from care_companion.serving.persistence import RecordKeeper
from care_companion.serving.predict import Predictor, Upload
from care_companion.serving.schemas import (
    BatchResponse,
    ErrorBody,
    Health,
    LoadedModelInfo,
    ModelsResponse,
    PredictionResult,
    ReloadResponse,
)

IMAGE_TYPES = ("image/", "application/dicom", "application/octet-stream")


def get_predictor(request: Request) -> Predictor:
    """The app's predictor."""
    return request.app.state.predictor


def get_models(request: Request) -> ModelManager:
    """The app's model manager."""
    return request.app.state.models


def get_records(request: Request) -> RecordKeeper:
    """The app's record keeper."""
    return request.app.state.records


PredictorDep = Annotated[Predictor, Depends(get_predictor)]
ModelsDep = Annotated[ModelManager, Depends(get_models)]
RecordsDep = Annotated[RecordKeeper, Depends(get_records)]

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "Not a usable image (empty, not an image, truncated, too small, decompression bomb, no pixel data).",
        413: "Upload over the size limit (or too many images in a batch).",
        415: "Wrong content type, or an image encoding this server cannot decode.",
        422: "Not an image of this task (e.g. not a chest X-ray), or a missing field.",
        503: "No model is loaded for the task, or the engine is overloaded; retry later.",
    }.items()
}


def _request_meta(request: Request) -> tuple[str, float]:
    state = request.scope.get("state", {})
    return state.get("request_id", "-"), state.get("started", time.perf_counter())


async def _read(upload: UploadFile, field: str) -> Upload:
    """The bytes of one uploaded file; refuses parts that declare a non-image content type."""
    declared = (upload.content_type or "").split(";")[0].strip().lower()
    name = upload.filename or field
    if declared and not declared.startswith(IMAGE_TYPES):
        raise RequestError(
            f"{name}: content type {declared!r} is not an image; send PNG, JPEG or DICOM",
            code="unsupported_media_type",
            status=415,
        )
    return Upload(name=name, data=await upload.read())


predict = APIRouter(tags=["predict"], responses={**ERRORS, **AUTH_ERRORS})


@predict.post("/v1/predict/chest", response_model=PredictionResult, summary="Chest X-ray: one image")
async def predict_chest(
    request: Request,
    predictor: PredictorDep,
    records: RecordsDep,
    user: Uploader,
    file: Annotated[UploadFile, File(description="A frontal chest radiograph: PNG, JPEG or DICOM.")],
    study_id: Annotated[
        int | None,
        Form(description="Store the image and result with this study (of the uploader's department)."),
    ] = None,
) -> PredictionResult:
    """Classify one chest X-ray as normal, pneumonia or tuberculosis, with calibrated probabilities.

    Needs a login with upload rights (technician, radiologist or admin). A film that is not a chest X-ray gets
    422. With ``study_id`` the image and result are stored with the
    study in one transaction (503 and nothing stored if the database or the store fails); without it the
    result is logged anonymously. Every result must be reviewed by a radiologist.
    """
    request_id, started = _request_meta(request)
    caller = await records.authorise(user, study_id, "chest")
    upload = await _read(file, "file")
    result = await predictor.predict("chest", upload, request_id=request_id, started=started)
    return await records.keep(caller, [("frontal", upload)], result)


@predict.post("/v1/predict/chest/batch", response_model=BatchResponse, summary="Chest X-rays: several images")
async def predict_chest_batch(
    request: Request,
    predictor: PredictorDep,
    records: RecordsDep,
    user: Uploader,
    files: Annotated[list[UploadFile], File(description="Chest radiographs; results come back in this order.")],
) -> BatchResponse:
    """Classify several chest X-rays in one request; each image succeeds or fails on its own (logged anonymously)."""
    request_id, started = _request_meta(request)
    caller = await records.authorise(user, None, "chest")
    uploads = []
    for i, f in enumerate(files):
        uploads.append(await _read(f, f"files[{i}]"))
    batch = await predictor.predict_batch("chest", uploads, request_id=request_id, started=started)
    for item in batch.items:
        if item.result is not None:
            item.result = await records.keep(caller, [("frontal", uploads[item.index])], item.result)
    return batch


@predict.post("/v1/predict/wrist", response_model=PredictionResult, summary="Wrist study: PA and lateral views")
async def predict_wrist(
    request: Request,
    predictor: PredictorDep,
    records: RecordsDep,
    user: Uploader,
    pa: Annotated[UploadFile | None, File(description="Posteroanterior (PA) view: PNG, JPEG or DICOM.")] = None,
    lateral: Annotated[UploadFile | None, File(description="Lateral view: PNG, JPEG or DICOM.")] = None,
    study_id: Annotated[
        int | None,
        Form(description="Store the images and result with this wrist study (of the uploader's department)."),
    ] = None,
) -> PredictionResult:
    """Fracture triage of a wrist study from its PA and lateral views, with a calibrated probability.

    Either view may be missing: the model then reads the one it has, ``views_used`` says which, and the result
    is low-confidence (a fracture can show in one view only). Needs a login with upload rights. With
    ``study_id`` both images and the result are stored with the study in one transaction. Answers 503 until
    a wrist model is registered. Every result must be reviewed by a radiologist.
    """
    request_id, started = _request_meta(request)
    caller = await records.authorise(user, study_id, "wrist")
    views = {
        "pa": await _read(pa, "pa") if pa else None,
        "lateral": await _read(lateral, "lateral") if lateral else None,
    }
    result = await predictor.predict_study("wrist", views, request_id=request_id, started=started)
    kept = [(view, upload) for view, upload in views.items() if upload is not None and view in result.views_used]
    return await records.keep(caller, kept, result)


# The proposal's original endpoint names, kept as aliases.
predict.add_api_route(
    "/predict_chest",
    predict_chest,
    methods=["POST"],
    response_model=PredictionResult,
    deprecated=True,
    summary="Alias of /v1/predict/chest",
)
predict.add_api_route(
    "/predict_wrist",
    predict_wrist,
    methods=["POST"],
    response_model=PredictionResult,
    deprecated=True,
    summary="Alias of /v1/predict/wrist",
)


def model_info(model: ServedModel) -> LoadedModelInfo:
    """What ``GET /v1/models`` says about a loaded model."""
    meta = model.meta
    return LoadedModelInfo(
        task=model.task_name,
        name=meta.task,
        version=model.source.version,
        alias=model.source.alias,
        source=model.source.reference,
        classes=list(meta.classes),
        positives=list(meta.positives),
        reject=meta.reject,
        thresholds=model.predictor.thresholds,
        temperature=model.predictor.temperature,
        input_size=meta.input_size,
        precision=model.predictor.precision,
        backbone=meta.backbone,
        dataset_version=meta.dataset_version,
        demo=meta.demo,
        loaded_at=model.loaded_at,
        metrics={k: float(v) for k, v in meta.metrics.items() if isinstance(v, int | float)},
    )


ops = APIRouter(tags=["operations"])


@ops.get("/health", response_model=Health, summary="Liveness")
async def health() -> Health:
    """The process is up and answering."""
    return Health(status="ok")


@ops.get("/ready", response_model=Health, responses={503: {"model": Health}}, summary="Readiness")
async def ready(models: ModelsDep) -> Response:
    """Ready when at least one model is loaded; lists what each task serves."""
    loaded: dict[str, str | None] = {m.task_name: m.source.version or m.source.reference for m in models.loaded()}
    body = Health(
        status="ready" if loaded else "not_ready",
        models=loaded,
        detail="; ".join(f"{t}: {why}" for t, why in models.unavailable.items()) or None,
    )
    return JSONResponse(body.model_dump(), status_code=200 if loaded else 503)


@ops.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    registry: ServiceMetrics = request.app.state.metrics
    return Response(registry.render(), media_type=registry.content_type)


@ops.get("/v1/models", response_model=ModelsResponse, summary="Loaded models")
async def list_models(models: ModelsDep) -> ModelsResponse:
    """Loaded models with versions, classes and operating-point thresholds; why any task has none."""
    return ModelsResponse(data=[model_info(m) for m in models.loaded()], unavailable=dict(models.unavailable))


@ops.post(
    "/v1/admin/reload",
    response_model=ReloadResponse,
    dependencies=[Depends(require_briefly(Permission.MANAGE_MODELS))],
    responses=AUTH_ERRORS,
    summary="Reload models",
)
async def reload(models: ModelsDep) -> ReloadResponse:
    """Look up every task's model again and swap in newly promoted versions; requests in flight finish first.

    Needs an admin (the ``manage_models`` permission).
    """
    changes = await models.refresh()
    return ReloadResponse(changes=changes, models=[model_info(m) for m in models.loaded()])
