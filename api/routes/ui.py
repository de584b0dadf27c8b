"""``/ui/*``: small server-rendered pages (approvals, the metrics dashboard).

``GET /ui/approvals`` and ``GET /ui/dashboard`` are each one HTML page plus a script and a style
sheet served from ``api/static/``; no build step, nothing from a CDN. A page holds no job data
and needs no key to load: its script calls the same ``/v1`` endpoints any client does, with the
API key the user types in (kept in the tab's ``sessionStorage``), unless the server runs with
authentication off. Every text from a job is put on the page as text (``textContent``), never as
markup, and the content security policy allows scripts and styles from this origin only.
"""

from __future__ import annotations

from pathlib import Path
from string import Template
from typing import Final

from fastapi import APIRouter, Response
from fastapi.responses import FileResponse, HTMLResponse

from api.deps import StateDep

router = APIRouter(prefix="/ui", tags=["ui"], include_in_schema=False)

_API_DIR = Path(__file__).resolve().parent.parent
TEMPLATES_DIR: Final = _API_DIR / "templates"
"""Where the pages' HTML templates live (``string.Template`` syntax)."""
STATIC_DIR: Final = _API_DIR / "static"
"""Where the pages' scripts and style sheets live."""

STATIC_FILES: Final[dict[str, str]] = {
    "approvals.js": "text/javascript; charset=utf-8",
    "approvals.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
"""The files ``/ui/static/{name}`` serves, with their media types; any other name is a 404."""

SECURITY_HEADERS: Final[dict[str, str]] = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
"""Headers on every ``/ui`` answer: only this origin's scripts, styles and API calls."""


def _render(name: str, **values: str) -> str:
    """The template ``name`` with ``$placeholders`` filled by ``values`` (trusted strings only)."""
    template = Template((TEMPLATES_DIR / name).read_text(encoding="utf-8"))
    return template.substitute(values)


@router.get("/approvals", response_class=HTMLResponse)
async def approvals_page(state: StateDep) -> HTMLResponse:
    """The approvals page: the jobs waiting for a decision, live, with per-call decisions.

    The page itself carries no data; ``data-auth`` tells its script whether to ask for an API
    key (``required``) or not (``off``: the server runs with ``AGENTFLOW_AUTH_DISABLED``).
    """
    auth = "off" if state.settings.auth_disabled else "required"
    return HTMLResponse(_render("approvals.html", auth=auth), headers=SECURITY_HEADERS)


@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard_page(state: StateDep) -> HTMLResponse:
    """The metrics dashboard: latency percentiles, cost by tier, cache hit rates, tier mix.

    Charts are inline SVG drawn by the page's script from ``/v1/metrics/summary``,
    ``/v1/metrics/timeseries`` and ``/v1/metrics/cost``; ``data-auth`` works as on the approvals
    page (the key needs the ``read`` scope).
    """
    auth = "off" if state.settings.auth_disabled else "required"
    return HTMLResponse(_render("dashboard.html", auth=auth), headers=SECURITY_HEADERS)


@router.get("/static/{name}")
async def static_file(name: str) -> Response:
    """One of :data:`STATIC_FILES` (404 for any other name)."""
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        return Response(status_code=404, headers=SECURITY_HEADERS)
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers=SECURITY_HEADERS)
