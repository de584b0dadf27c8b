"""``agentflow submit --follow`` against servers that misbehave, over real HTTP.

Each test serves a small Starlette app under uvicorn on a loopback port: not agentflow's API,
but what a CLI pointed at the wrong URL, a broken proxy or a hostile server would read. The CLI
must stay bounded in memory and time and end with a clear message, never a traceback.
"""

from __future__ import annotations

import io
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from rich.console import Console
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cli.follow.stream import MAX_LINE_BYTES, FollowError, follow_events
from cli.follow.submit import SubmitOptions, submit
from cli.follow.view import FollowView
from core.events import StageCompleted
from core.models import Stage
from tests.helpers import serve_asgi

JOB = "hostile-job"


def sse(body: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(body, media_type="text/event-stream")


async def not_found(_request: Request) -> Response:
    return JSONResponse({"detail": "no such job"}, status_code=404)


def app(events: Any) -> Starlette:
    return Starlette(
        routes=[
            Route(f"/v1/jobs/{JOB}/events", events),
            Route(f"/v1/jobs/{JOB}", not_found),
        ]
    )


def view() -> tuple[FollowView, io.StringIO]:
    out = io.StringIO()
    return FollowView(Console(file=out, width=200), time.monotonic()), out


async def test_a_line_longer_than_the_limit_stops_the_follow() -> None:
    async def endless_line(_request: Request) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b"data: "
            for _ in range(MAX_LINE_BYTES // 65536 + 64):  # past the limit, never a newline
                yield b"x" * 65536

        return sse(body())

    shown, _ = view()
    with serve_asgi(app(endless_line)) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            with pytest.raises(FollowError, match="a line over 1024 KiB"):
                await follow_events(client, JOB, shown, max_reconnects=1)


async def test_a_server_that_ignores_last_event_id_shows_each_event_once() -> None:
    event = StageCompleted(job_id=JOB, stage=Stage.TOOLS, duration_ms=12.5).model_dump_json()
    seen_ids: list[str | None] = []

    async def repeats(request: Request) -> StreamingResponse:
        seen_ids.append(request.headers.get("last-event-id"))

        async def body() -> AsyncIterator[bytes]:
            yield f"id: 1\nevent: stage_completed\ndata: {event}\n\n".encode()

        return sse(body())

    shown, out = view()
    with serve_asgi(app(repeats)) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            with pytest.raises(FollowError, match="gave up after 1 reconnections"):
                await follow_events(client, JOB, shown, max_reconnects=1)
    shown.close()
    assert seen_ids == [None, "1"]  # it did resume from its cursor
    assert out.getvalue().count("tools") == 1, out.getvalue()


async def test_a_stream_of_events_the_cli_cannot_read_ends() -> None:
    async def bogus(_request: Request) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            for _ in range(20):  # 2,000 events, twice the limit
                yield b'event: bogus\ndata: {"type": "bogus"}\n\n' * 100

        return sse(body())

    shown, out = view()
    with serve_asgi(app(bogus)) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            with pytest.raises(FollowError, match="cannot read; stopped following"):
                await follow_events(client, JOB, shown, max_reconnects=1)
    shown.close()
    assert out.getvalue().count("skipped an event") == 3


@pytest.mark.parametrize(
    "answer",
    [
        Response("<html>login</html>", status_code=202, media_type="text/html"),
        JSONResponse({"status": "QUEUED"}, status_code=202),
    ],
    ids=["html", "no-job-id"],
)
async def test_submit_against_something_that_is_not_the_api_says_so(answer: Response) -> None:
    async def jobs(_request: Request) -> Response:
        return answer

    out = io.StringIO()
    with serve_asgi(Starlette(routes=[Route("/v1/jobs", jobs, methods=["POST"])])) as url:
        code = await submit({"query": "q"}, SubmitOptions(api_url=url), Console(file=out))
    assert code == 1
    assert "without a job" in out.getvalue() and "Traceback" not in out.getvalue()
