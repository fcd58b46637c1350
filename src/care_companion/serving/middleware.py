"""The ASGI guard around every request: request id, body-size limit (413), security headers, latency and status
metrics.

It is pure ASGI so it can count body bytes as they stream in and answer 413 before an oversized upload is
held in memory or on disk, whatever the client claims in ``Content-Length``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import uuid
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from care_companion.monitoring.metrics import ServiceMetrics
from care_companion.tasks import TASKS

Scope = dict[str, Any]
Message = dict[str, Any]
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


# The pages the service serves (the dashboard, the clinicians' app) load only their own scripts and styles, from
# this origin, and may not be framed; FastAPI's /docs and /redoc load theirs from a CDN with inline scripts, so
# they get no Content-Security-Policy (they are for engineers; offline they do not load anyway).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
NO_CSP_PATHS = ("/docs", "/redoc")
REPLICA = f"{socket.gethostname()}:{os.getpid()}".encode()  # which process answered (X-Care-Replica)


def security_headers(path: str) -> list[tuple[bytes, bytes]]:
    """The security headers every response of ``path`` carries."""
    headers = [
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"no-referrer"),
    ]
    if not path.startswith(NO_CSP_PATHS):
        headers.append((b"content-security-policy", CONTENT_SECURITY_POLICY.encode()))
    return headers


class BodyTooLarge(Exception):
    """The request body passed its limit while streaming in."""


def _json(status: int, code: str, detail: str, request_id: str) -> tuple[Message, Message]:
    body = json.dumps({"error": code, "detail": detail}).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", request_id.encode()),
            (b"connection", b"close"),
        ],
    }
    return start, {"type": "http.response.body", "body": body}


class RequestGuard:
    """Wraps the app: assigns request ids, enforces ``limit_for(path)`` on bodies, observes every request."""

    def __init__(
        self, app: Any, *, metrics: ServiceMetrics, limit_for: Callable[[str], int], paths: frozenset[str]
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.limit_for = limit_for
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"], state["started"] = request_id, started
        limit = self.limit_for(scope.get("path", ""))
        status = 500
        sent_start = False
        overflow = False
        refused_size = False  # this guard answered 413 (not the app, e.g. too_many_images)

        async def reply(code: int, error: str, detail: str) -> None:
            nonlocal status, sent_start, refused_size
            start, body = _json(code, error, detail, request_id)
            status, sent_start, refused_size = code, True, code == 413
            await send(start)
            await send(body)

        try:
            declared = headers.get("content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > limit):
                if declared.isdigit():
                    await reply(
                        413, "payload_too_large", f"request body of {declared} bytes is over the {limit}-byte limit"
                    )
                else:
                    await reply(400, "bad_request", f"invalid Content-Length header {declared!r}")
                return

            received = 0

            async def guarded_receive() -> Message:
                nonlocal received, overflow
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        overflow = True
                        raise BodyTooLarge
                return message

            async def tracked_send(message: Message) -> None:
                nonlocal status, sent_start
                if overflow:  # whatever the app makes of the aborted body, the answer is 413
                    if not sent_start:
                        await reply(413, "payload_too_large", f"request body is over the {limit}-byte limit")
                    return
                if message["type"] == "http.response.start":
                    status, sent_start = message["status"], True
                    extra = [
                        (b"x-request-id", request_id.encode()),
                        (b"x-care-replica", REPLICA),
                        *security_headers(scope.get("path", "")),
                    ]
                    message = {**message, "headers": [*message.get("headers", []), *extra]}
                await send(message)

            try:
                await self.app(scope, guarded_receive, tracked_send)
            except BodyTooLarge:
                if not sent_start:
                    await reply(413, "payload_too_large", f"request body is over the {limit}-byte limit")
        finally:
            endpoint, task = endpoint_and_task(scope, self.paths)
            if refused_size:
                self.metrics.observe_rejection(task, "payload_too_large")
            self.metrics.observe_request(endpoint, scope.get("method", "-"), status, time.perf_counter() - started)


def endpoint_and_task(scope: Scope, paths: frozenset[str]) -> tuple[str, str]:
    """The metrics labels of a request: its route (a registered task's name in place of ``{task}``, so each
    task keeps its own series; "unmatched" for an unknown path) and its task ("-" for none).

    Works before routing too (a body refused by size has no route yet): the path is matched against the
    route templates."""
    path = scope.get("path", "")
    route = getattr(scope.get("route"), "path", None)
    named = scope.get("path_params", {}).get("task")
    if route is None:
        route, named = _match(path, paths)
    if route is None:
        return "unmatched", "-"
    if isinstance(named, str) and named in TASKS:
        return route.replace("{task}", named), named
    if "{task}" in route:
        return route, "-"
    segments = set(route.replace("_", "/").split("/"))
    return route, next((t for t in TASKS if t in segments), "-")


def _match(path: str, paths: frozenset[str]) -> tuple[str | None, str | None]:
    """The route template a raw path falls under, and its ``{task}`` value."""
    if path in paths:
        return path, None
    for template in paths:
        found = _pattern(template).match(path) if "{" in template else None
        if found:
            return template, found.groupdict().get("task")
    return None, None


@lru_cache(maxsize=256)
def _pattern(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template)) + "$")
