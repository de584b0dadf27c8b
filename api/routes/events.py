"""``GET /v1/jobs/{job_id}/events``: the job's event stream as Server-Sent Events.

The stream itself (its messages, where they come from, how it ends) is :mod:`api.streams`;
the checks before it starts, which can still be an HTTP status, are :mod:`api.stream_checks`.
This module declares the route and its OpenAPI description. Built on FastAPI's own SSE support
(``fastapi.sse``), which cancels the generator when the client disconnects.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query
from fastapi.sse import EventSourceResponse

from api.deps import ReadKey, StateDep
from api.openapi import error_responses
from api.routes.jobs import JobIdPath
from api.stream_checks import MAX_OFFSET, open_stream
from api.streams import JobEventStream
from core.events import JobEvent

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


async def open_event_stream(
    job_id: JobIdPath,
    principal: ReadKey,
    state: StateDep,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            max_length=64,
            description="The last event id the client saw (`12`, or `12:<token id>` once it "
            "saw token events); the stream resumes after it. Browsers' EventSource sends it "
            "when reconnecting. Wins over `after`.",
        ),
    ] = None,
    after: Annotated[
        int | None,
        Query(
            ge=0,
            le=MAX_OFFSET,
            description="The last durable offset seen, for clients that cannot set headers.",
        ),
    ] = None,
) -> JobEventStream:
    """The connection's stream, after every check that can still be an HTTP status.

    Raises:
        ApiError: 404, 409, 422, 429 or 503 (see :func:`api.stream_checks.open_stream`).
    """
    return await open_stream(state, principal, job_id, last_event_id, after)


def _json_error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """:func:`api.openapi.error_responses` with their bodies documented as JSON.

    FastAPI documents a response ``model`` under the route's own media type, which here is
    ``text/event-stream``; the error answers are JSON, so each names its schema explicitly (the
    error models are in the schema's components: every other route uses them).
    """
    responses: dict[int | str, dict[str, Any]] = {}
    for code, entry in error_responses(*codes).items():
        documented = {k: v for k, v in entry.items() if k != "model"}
        schema = {"$ref": f"#/components/schemas/{entry['model'].__name__}"}
        documented["content"] = {"application/json": {"schema": schema}}
        responses[code] = documented
    return responses


_STREAM_DESCRIPTION = (
    "The job's events as Server-Sent Events: `id` is the reader's resume cursor (`<offset>` or "
    "`<offset>:<token id>`), `event` the type, `data` the event JSON (`core.events.JobEvent`; "
    "durable events with `offset`). Keep-alive comments while idle; the stream closes after "
    "`final_response` or `response_error`, or after a `stream_error` event saying why it "
    "cannot go on."
)


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    response_description=_STREAM_DESCRIPTION,
    responses=_json_error_responses(401, 403, 404, 409, 422, 429, 503),
)
async def stream_job_events(
    stream: Annotated[JobEventStream, Depends(open_event_stream)],
) -> AsyncIterator[JobEvent]:
    """Follow a job live: every event it published, then each new one as it happens.

    Resume after a dropped connection with `Last-Event-ID: <last id seen>` (or `?after=` with
    the last offset): nothing is missed and nothing repeats. A finished job replays its durable
    events from its record (no worker needed) and closes. A job without an event stream
    (started before streams existed, or whose workflow history is gone) gets one terminal event
    built from its record, after the comment `: synthesized from the job record ...`, with no
    `id` and `offset: null`. A stream that cannot go on ends with a `stream_error` event
    (`reason`, `retry`, `detail`); reconnect with `Last-Event-ID` when `retry` is true.
    """
    # The messages are ServerSentEvent items (FastAPI sends those as they are); the annotation
    # gives OpenAPI the schema of each message's `data`.
    async for message in stream.messages():
        yield message  # type: ignore[misc]
