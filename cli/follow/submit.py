"""``agentflow submit``: submit one request, and with ``--follow`` print its events live.

The request goes to ``POST /v1/jobs``; with ``--follow`` the job's events are read by
:func:`cli.follow.stream.follow_events` and printed by :class:`cli.follow.view.FollowView`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from rich.console import Console
from rich.markup import escape

from cli.follow.stream import FollowError, follow_events
from cli.follow.view import FollowView
from cli.runner import error_detail
from core.events import FinalResponse
from core.models import JobStatus


@dataclass(frozen=True)
class SubmitOptions:
    """What ``agentflow submit`` sends and how it waits.

    Attributes:
        api_url: base URL of the API.
        api_key: sent as ``Authorization: Bearer`` (needs ``submit``, and ``read`` to follow).
        follow: print the job's events until it ends.
    """

    api_url: str = "http://127.0.0.1:8000"
    api_key: str | None = field(default=None, repr=False)
    follow: bool = False


def parse_tool_option(text: str, index: int) -> dict[str, Any]:
    """One ``--tool NAME:JSON`` option as a ``tool_calls`` entry with id ``t<index>``.

    Args:
        text: ``NAME:JSON``, e.g. ``calculator:{"expression": "2 + 2"}``; ``NAME`` alone means
            no parameters.
        index: 1-based position among the ``--tool`` options.

    Raises:
        ValueError: no name, or JSON that is not an object.
    """
    name, _, raw = text.partition(":")
    name = name.strip()
    if not name:
        raise ValueError(f"--tool {text!r}: expected NAME:JSON")
    try:
        parameters = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"--tool {name}: the parameters are not JSON ({exc})") from None
    if not isinstance(parameters, dict):
        raise ValueError(f"--tool {name}: the parameters must be a JSON object")
    return {"id": f"t{index}", "name": name, "parameters": parameters}


async def submit(body: dict[str, Any], options: SubmitOptions, console: Console) -> int:
    """Submit ``body`` (a ``JobCreate``) and, with ``follow``, print its events until it ends.

    Returns:
        The exit code: without ``follow``, 0 when the API accepted the job; with it, 0 when the
        job COMPLETED, 1 otherwise (refused, failed, rejected, expired, canceled, lost).
    """
    headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=options.api_url, headers=headers, timeout=30) as client:
        try:
            response = await client.post("/v1/jobs", json=body)
        except httpx.HTTPError as exc:
            console.print(f"[red]cannot reach the API at {options.api_url}: {exc!r}[/]")
            return 1
        if not response.is_success:
            console.print(f"[red]the API refused the job: {escape(error_detail(response))}[/]")
            return 1
        try:
            job = response.json()
            job_id, status = str(job["job_id"]), str(job["status"])
        except (ValueError, KeyError, TypeError) as exc:  # not JSON, or not a job
            console.print(
                f"[red]the API at {escape(options.api_url)} answered {response.status_code} "
                f"without a job ({type(exc).__name__}): is it agentflow's API?[/]"
            )
            return 1
        console.print(f"job [bold]{job_id}[/] {escape(status)}", highlight=False)
        if not options.follow:
            console.print(
                f"[dim]follow it: GET {options.api_url}/v1/jobs/{job_id}/events "
                f"(or GET /v1/jobs/{job_id})[/]",
                highlight=False,
            )
            return 0
        view = FollowView(console, started)
        try:
            end = await follow_events(client, job_id, view)
        except FollowError as exc:
            view.close()
            view.note(str(exc))
            return 1
        finally:
            view.close()
        if view.first_event_s is not None:
            console.print(f"[dim]first event {view.first_event_s:.2f} s after submit[/]")
        completed = isinstance(end, FinalResponse) and end.status is JobStatus.COMPLETED
        return 0 if completed else 1


__all__ = ["SubmitOptions", "parse_tool_option", "submit"]
