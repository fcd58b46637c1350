"""Every failure becomes a JSON answer ``{"error": CODE, "detail": TEXT}`` with the right HTTP status.

Expected errors (:class:`CareError`) map to 4xx/503; anything unexpected is logged with the request id and
answered 500 without internals.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from care_companion.errors import (
    AuthError,
    CareError,
    ConfigError,
    DataError,
    Forbidden,
    InvalidImageError,
    ModelError,
    NotForTask,
    RequestError,
    ServiceUnavailable,
    error_code,
)
from care_companion.records.repos import Conflict, NotFound

log = logging.getLogger(__name__)

MULTIPART = "multipart/form-data"
UPLOAD_PATHS = ("/v1/predict/", "/predict_")


def error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error body."""
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def status_of(exc: CareError) -> int:
    """HTTP status of an expected error."""
    if isinstance(exc, RequestError):
        return exc.status
    if isinstance(exc, AuthError):
        return 401
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict):
        return 409
    if isinstance(exc, Forbidden):
        return 403
    if isinstance(exc, InvalidImageError):
        return 415 if exc.reason == "unsupported" else 400
    if isinstance(exc, NotForTask):
        return 422
    if isinstance(exc, ServiceUnavailable | ModelError):
        return 503
    if isinstance(exc, ConfigError | DataError):
        return 400
    return 400


def _slug(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "http_error"


def install_error_handlers(app: FastAPI) -> None:
    """Register the JSON error handlers on ``app``."""

    @app.exception_handler(CareError)
    async def care_error(request: Request, exc: CareError) -> JSONResponse:
        status = status_of(exc)
        headers = {"Retry-After": "1"} if status == 503 else {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return error_response(status, error_code(exc), exc.detail, headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        upload = request.url.path.startswith(UPLOAD_PATHS)
        if upload and request.method == "POST" and not content_type.startswith(MULTIPART):
            return error_response(
                415,
                "unsupported_media_type",
                f"send the image(s) as {MULTIPART} (got {content_type or 'no content type'}); "
                "e.g. curl -F file=@image.png",
            )
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            problems.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid")))
        return error_response(422, "invalid_request", "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return error_response(exc.status_code, _slug(exc.status_code), detail, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", "-")
        log.exception("unexpected error in %s %s (request %s)", request.method, request.url.path, request_id)
        return error_response(500, "internal_error", f"unexpected server error; quote request id {request_id}")
