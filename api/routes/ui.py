"""``/ui/*``: small server-rendered pages (approvals, the metrics dashboard).

``GET /ui/approvals`` and ``GET /ui/dashboard`` are each one HTML page plus a script and a style
sheet served from ``api/static/``; no build step, nothing from a CDN. A page holds no job data
and needs no key to load: its script calls the same ``/v1`` endpoints any client does, with the
API key the user types in (kept in the tab's ``sessionStorage``), unless the server runs with
authentication off. Every text from a job is put on the page as text (``textContent``), never as
markup, and the content security policy allows scripts and styles from this origin only.

The pages are Jinja2 templates (Starlette's :class:`~starlette.templating.Jinja2Templates`,
autoescape on for every template), which replaced ``string.Template`` pages; the scripts and
style sheets are served by Starlette's :class:`~starlette.staticfiles.StaticFiles`, which
replaced a hand-written route over an allowlist of file names. Kept by hand: the headers every
``/ui`` answer carries (:data:`SECURITY_HEADERS`), including the 404 for an unknown file, and
the media types by suffix (:data:`STATIC_MEDIA_TYPES`: a file of any other kind is a 404, so
nothing put in ``api/static`` by mistake is served as something a browser runs).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import Scope

from api.deps import StateDep

router = APIRouter(prefix="/ui", tags=["ui"], include_in_schema=False)

_API_DIR = Path(__file__).resolve().parent.parent
TEMPLATES_DIR: Final = _API_DIR / "templates"
"""Where the pages' Jinja2 templates live."""
STATIC_DIR: Final = _API_DIR / "static"
"""Where the pages' scripts and style sheets live (served at ``/ui/static/<name>``)."""

STATIC_MEDIA_TYPES: Final[dict[str, str]] = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
"""The kinds of file ``/ui/static`` serves, by suffix, with their media types."""

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

templates = Jinja2Templates(
    env=jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
)
"""The pages' templates: every value is escaped, and a missing one is an error (not blank)."""


class UiStaticFiles(StaticFiles):
    """:class:`StaticFiles` with :data:`SECURITY_HEADERS` on every answer, 404 included."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        """The file at ``path`` (a 404 carrying the headers for anything else)."""
        try:
            response = await super().get_response(path, scope)
        except HTTPException as exc:
            return Response(
                status_code=exc.status_code, headers={**SECURITY_HEADERS, **(exc.headers or {})}
            )
        response.headers.update(SECURITY_HEADERS)
        return response

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        """The file with its media type from :data:`STATIC_MEDIA_TYPES` (404 for other kinds)."""
        media_type = STATIC_MEDIA_TYPES.get(Path(full_path).suffix)
        if media_type is None:
            raise HTTPException(status_code=404)
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["content-type"] = media_type  # not the platform's mimetypes table
        return response


router.mount(f"{router.prefix}/static", UiStaticFiles(directory=STATIC_DIR), name="ui-static")


def _page(request: Request, name: str, state: StateDep) -> HTMLResponse:
    """The page ``name``; ``auth`` tells its script whether to ask for an API key."""
    auth = "off" if state.settings.auth_disabled else "required"
    return templates.TemplateResponse(request, name, {"auth": auth}, headers=SECURITY_HEADERS)


@router.get("/approvals", response_class=HTMLResponse)
async def approvals_page(request: Request, state: StateDep) -> HTMLResponse:
    """The approvals page: the jobs waiting for a decision, live, with per-call decisions.

    The page itself carries no data; ``data-auth`` tells its script whether to ask for an API
    key (``required``) or not (``off``: the server runs with ``AGENTFLOW_AUTH_DISABLED``).
    """
    return _page(request, "approvals.html", state)


@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard_page(request: Request, state: StateDep) -> HTMLResponse:
    """The metrics dashboard: latency percentiles, cost by tier, cache hit rates, tier mix.

    Charts are inline SVG drawn by the page's script from ``/v1/metrics/summary``,
    ``/v1/metrics/timeseries`` and ``/v1/metrics/cost``; ``data-auth`` works as on the approvals
    page (the key needs the ``read`` scope).
    """
    return _page(request, "dashboard.html", state)
