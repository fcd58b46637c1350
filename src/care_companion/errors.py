"""One exception hierarchy: every expected failure carries a stable ``code`` for APIs and the CLI."""

from __future__ import annotations


class CareError(Exception):
    """Base of all expected errors; ``code`` is stable and machine-readable."""

    code = "care_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidImageError(CareError):
    """An input file is not a decodable, usable radiograph."""

    code = "invalid_image"

    def __init__(self, detail: str, *, reason: str = "invalid_image") -> None:
        super().__init__(detail)
        self.reason = reason


class DataError(CareError):
    """A data set, manifest or source folder is missing or malformed."""

    code = "data_error"


class ConfigError(CareError):
    """A setting, credential or option is missing or inconsistent."""

    code = "config_error"


class ModelError(CareError):
    """A model bundle or registry entry is missing or malformed."""

    code = "model_error"


class GateRefused(CareError):
    """A trained model fell short of the registry gate."""

    code = "gate_refused"

    def __init__(self, detail: str, *, shortfalls: list[str]) -> None:
        super().__init__(detail)
        self.shortfalls = shortfalls


class NotForTask(CareError):
    """A decodable image that is not an image of the task (a photo, a screenshot, another body part)."""

    code = "not_for_task"

    def __init__(self, detail: str, *, task: str, code: str | None = None) -> None:
        super().__init__(detail)
        self.task = task
        self.code = code or f"not_a_{task}_radiograph"


class RequestError(CareError):
    """A request the service cannot take as sent; ``status`` is its HTTP status."""

    code = "invalid_request"
    status = 422

    def __init__(self, detail: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(detail)
        if code:
            self.code = code
        if status:
            self.status = status


class ServiceUnavailable(CareError):
    """The service cannot answer now (no model loaded, overloaded); the client may retry later."""

    code = "unavailable"

    def __init__(self, detail: str, *, code: str = "unavailable") -> None:
        super().__init__(detail)
        self.code = code


def error_code(exc: CareError) -> str:
    """The public code of an error: an invalid image reports its reason (truncated, empty, ...)."""
    return exc.reason if isinstance(exc, InvalidImageError) else exc.code


class AuthError(CareError):
    """Missing, malformed, expired or unknown credentials (HTTP 401)."""

    code = "unauthorized"

    def __init__(self, detail: str, *, code: str = "unauthorized") -> None:
        super().__init__(detail)
        self.code = code


class Forbidden(CareError):
    """Valid credentials, but the role may not do this (HTTP 403)."""

    code = "forbidden"
