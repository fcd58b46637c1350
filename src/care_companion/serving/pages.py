"""The pages the service serves itself (no CDN, no separate server): the monitoring dashboard for engineers
and the clinicians' app for technicians and radiologists. Each is one HTML file with its scripts and styles, all
under ``serving/static``; they call the same JSON API as any client."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

from care_companion.errors import RequestError

pages_router = APIRouter(include_in_schema=False)

JS, CSS = "text/javascript; charset=utf-8", "text/css; charset=utf-8"
PAGES = {  # page path: (its HTML file, its assets and their types)
    "/dashboard": ("dashboard.html", {"dashboard.js": JS, "dashboard.css": CSS, "charts.js": JS}),
    "/app": ("app.html", {"app.js": JS, "app.css": CSS}),
}


def static_text(name: str) -> str:
    """A file of ``serving/static``."""
    return resources.files("care_companion.serving").joinpath("static", name).read_text(encoding="utf-8")


def _page(html: str) -> HTMLResponse:
    return HTMLResponse(static_text(html), headers={"Cache-Control": "no-cache"})


@pages_router.get("/dashboard", response_class=HTMLResponse)
def dashboard() -> HTMLResponse:
    """The monitoring dashboard: a page that signs in and draws what the monitoring API returns."""
    return _page(PAGES["/dashboard"][0])


@pages_router.get("/app", response_class=HTMLResponse)
def clinicians_app() -> HTMLResponse:
    """The clinicians' app: technicians upload studies, radiologists read the worklist and confirm or correct."""
    return _page(PAGES["/app"][0])


@pages_router.get("/{page}/assets/{name}")
def asset(page: str, name: str) -> Response:
    """A page's scripts and styles."""
    assets = PAGES.get(f"/{page}", ("", {}))[1]
    if name not in assets:
        raise RequestError(f"no asset {name!r} of page /{page}", code="not_found", status=404)
    return Response(static_text(name), media_type=assets[name], headers={"Cache-Control": "no-cache"})
