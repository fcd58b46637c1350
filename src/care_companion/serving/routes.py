"""HTTP routes: thin shells that parse uploads and call :class:`care_companion.serving.predict.Predictor`."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import FormData, UploadFile

from care_companion.errors import ConfigError, RequestError
from care_companion.records.models import User
from care_companion.security import Permission
from care_companion.serving.deps import MetricsDep, ModelsDep, PredictorDep, RecordsDep, Uploader, require_briefly
from care_companion.serving.engine import ServedModel
from care_companion.serving.persistence import Caller, RecordKeeper
from care_companion.serving.predict import Predictor, Upload
from care_companion.serving.schemas import (
    AUTH_ERRORS,
    BatchResponse,
    ErrorBody,
    Health,
    LoadedModelInfo,
    ModelsResponse,
    PredictionResult,
    ReloadResponse,
    TaskInfo,
)
from care_companion.tasks import TaskSpec, all_tasks, get_task, task_names

IMAGE_TYPES = ("image/", "application/dicom", "application/octet-stream")


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


def request_meta(request: Request) -> tuple[str, float]:
    """The request's id and the time it started (set by the middleware)."""
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


def served_task(name: str) -> TaskSpec:
    """The registered task of a path, or 404 naming the known ones."""
    try:
        return get_task(name)
    except ConfigError:
        raise RequestError(
            f"unknown task {name!r}; known tasks: {', '.join(task_names())}", code="unknown_task", status=404
        ) from None


async def _form(request: Request, spec: TaskSpec, *, files: int) -> FormData:
    """The multipart form of a prediction request (415 when the body is not multipart)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        field = spec.upload_fields[0]
        raise RequestError(
            f"send the image(s) as multipart/form-data (got {content_type or 'no content type'}); "
            f"e.g. curl -F {field}=@image.png",
            code="unsupported_media_type",
            status=415,
        )
    return await request.form(max_files=files, max_fields=files + 8)


def _int_field(form: FormData, name: str) -> int | None:
    value = form.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not value.strip().lstrip("-").isdigit():
        raise RequestError(f"{name}: Input should be a valid integer", code="invalid_request")
    return int(value)


def _files(form: FormData, field: str) -> list[UploadFile]:
    return [part for part in form.getlist(field) if isinstance(part, UploadFile)]


async def _predict_task(
    request: Request, spec: TaskSpec, predictor: Predictor, records: RecordKeeper, user: User
) -> PredictionResult:
    """One prediction of any task: one file per view (``file`` for a one-view task), optionally a study."""
    request_id, started = request_meta(request)
    form = await _form(request, spec, files=len(spec.upload_fields) * 2)
    study_id, patient_id = _int_field(form, "study_id"), _int_field(form, "patient_id")
    caller = await records.authorise(user, study_id, spec.name, patient_id=patient_id)
    views: dict[str, Upload] = {}
    if not spec.multiview:
        parts = _files(form, "file") or _files(form, spec.views[0])
        if not parts:
            raise RequestError("file: Field required", code="invalid_request")
        views[spec.views[0]] = await _read(parts[0], "file")
    for view in spec.views if spec.multiview else []:
        parts = _files(form, view)
        if parts:
            views[view] = await _read(parts[0], view)
    return await predict_and_keep(spec, views, predictor, records, caller, request_id=request_id, started=started)


async def predict_and_keep(
    spec: TaskSpec,
    views: dict[str, Upload],
    predictor: Predictor,
    records: RecordKeeper,
    caller: Caller,
    *,
    request_id: str,
    started: float,
) -> PredictionResult:
    """One prediction of ``spec`` on the given views' films (a one-view task: its one view), kept for ``caller``
    with the films the model read: what an upload and a DICOMweb study both do."""
    if not spec.multiview:
        upload = views[spec.views[0]]
        result = await predictor.predict(
            spec.name, upload, request_id=request_id, started=started, patient=caller.patient
        )
        return await records.keep(caller, [(spec.views[0], upload)], result)
    given: dict[str, Upload | None] = {view: views.get(view) for view in spec.views}
    result = await predictor.predict_study(
        spec.name, given, request_id=request_id, started=started, patient=caller.patient
    )
    kept = [(view, upload) for view, upload in views.items() if view in result.views_used]
    return await records.keep(caller, kept, result)


def _multipart(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    """An OpenAPI ``openapi_extra`` declaring a multipart body with these fields."""
    schema: dict[str, Any] = {"type": "object", "properties": properties} | ({"required": required} if required else {})
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


def _upload_body(batch: bool = False) -> dict[str, Any]:
    """The OpenAPI request body of the prediction routes: ``files`` for a batch, else ``file``, ``study_id`` and
    every registered multi-view task's view fields."""
    binary = {"type": "string", "format": "binary"}
    if batch:
        return _multipart({"files": {"type": "array", "items": binary, "description": "Images."}}, ["files"])
    properties: dict[str, Any] = {
        "file": binary | {"description": "The image of a one-view task."},
        "study_id": {"type": "integer", "description": "Store the images and result with this study."},
        "patient_id": {
            "type": "integer",
            "description": "Instead of study_id: open a new study of this patient with the result (none when the "
            "upload is refused or fails).",
        },
    }
    for spec in all_tasks():
        for view in spec.views if spec.multiview else []:
            properties[view] = binary | {"description": f"{spec.name}: {spec.serving.upload_help}"}
    return _multipart(properties)


PREDICT_DOC = """Classify one image (one-view task, field ``file``) or one study (multi-view task: one field per
view, e.g. ``pa`` and ``lateral`` for wrist), with calibrated probabilities and the bundle's operating point.

Needs a login with upload rights (technician, radiologist or admin). An image that is not of the task's body
part is refused with 422 (``not_a_<body part>_radiograph``; chest: ``not_a_chest_xray``) and no finding is
made. A multi-view study may miss a view: the model reads what it has, ``views_used`` says which, and the
result is low-confidence. With ``study_id`` the images and result are stored with the study in one
transaction (503 and nothing stored if the database or the store fails); with ``patient_id`` instead a new
study of that patient is opened in that transaction, so a refused or failed upload leaves no empty study;
without either the result is logged
anonymously. An unknown task is 404 listing the known ones (``GET /v1/tasks``). Every result must be reviewed
by a radiologist.
"""


def predict_router() -> APIRouter:
    """The prediction routes: ``POST /v1/predict/{task}`` and ``/v1/predict/{task}/batch`` for every
    registered task, plus the tasks' older paths as deprecated aliases."""
    router = APIRouter(tags=["predict"], responses={**ERRORS, **AUTH_ERRORS})
    body = _upload_body()

    async def predict_task(
        request: Request, task: str, predictor: PredictorDep, records: RecordsDep, user: Uploader
    ) -> PredictionResult:
        return await _predict_task(request, served_task(task), predictor, records, user)

    predict_task.__doc__ = PREDICT_DOC
    router.add_api_route(
        "/v1/predict/{task}",
        predict_task,
        methods=["POST"],
        response_model=PredictionResult,
        summary="Predict: one image or one study of a task",
        openapi_extra=body,
    )

    async def predict_batch(
        request: Request, task: str, predictor: PredictorDep, records: RecordsDep, user: Uploader
    ) -> BatchResponse:
        """Classify several images of a one-view task in one request; each image succeeds or fails on its own
        (logged anonymously). Multi-view tasks have no batch route (404)."""
        spec = served_task(task)
        if spec.multiview or not spec.serving.batch:
            raise RequestError(
                f"task {spec.name!r} has no batch route; send one study at a time", code="not_found", status=404
            )
        request_id, started = request_meta(request)
        caller = await records.authorise(user, None, spec.name)
        form = await _form(request, spec, files=predictor.settings.batch_max_images + 1)
        parts = _files(form, "files")
        if not parts:
            raise RequestError("files: Field required", code="invalid_request")
        uploads = [await _read(f, f"files[{i}]") for i, f in enumerate(parts)]
        batch = await predictor.predict_batch(spec.name, uploads, request_id=request_id, started=started)
        for item in batch.items:
            if item.result is not None:
                item.result = await records.keep(caller, [(spec.views[0], uploads[item.index])], item.result)
        return batch

    router.add_api_route(
        "/v1/predict/{task}/batch",
        predict_batch,
        methods=["POST"],
        response_model=BatchResponse,
        summary="Predict: several images of a one-view task",
        openapi_extra=_upload_body(batch=True),
    )
    for spec in all_tasks():
        for path in spec.serving.legacy_paths:
            router.add_api_route(
                path,
                _legacy(spec.name),
                methods=["POST"],
                response_model=PredictionResult,
                deprecated=True,
                summary=f"Alias of /v1/predict/{spec.name}",
                openapi_extra=body,
            )
    return router


def _legacy(name: str) -> Any:
    async def alias(request: Request, predictor: PredictorDep, records: RecordsDep, user: Uploader) -> PredictionResult:
        return await _predict_task(request, served_task(name), predictor, records, user)

    alias.__name__ = f"predict_{name}_alias"
    alias.__doc__ = f"The proposal's original path for {name}; use POST /v1/predict/{name}."
    return alias


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


@ops.get("/v1/tasks", response_model=list[TaskInfo], summary="Registered tasks")
async def list_tasks() -> list[TaskInfo]:
    """Every task the service knows: its classes, disease classes, views (the upload fields) and body part."""
    return [TaskInfo.from_spec(spec) for spec in all_tasks()]


@ops.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(registry: MetricsDep) -> Response:
    """Prometheus text exposition."""
    return Response(registry.render(), media_type=registry.content_type)


@ops.get("/v1/models", response_model=ModelsResponse, summary="Loaded models")
async def list_models(models: ModelsDep) -> ModelsResponse:
    """Loaded models with versions, classes and operating-point thresholds (production first, then any canary,
    alias ``canary``); why any task has none."""
    served = models.loaded() + models.canaries()
    return ModelsResponse(data=[model_info(m) for m in served], unavailable=dict(models.unavailable))


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
