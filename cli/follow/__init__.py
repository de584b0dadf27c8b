"""``agentflow submit [--follow]``: submit one request and print its events live.

One module per job: :mod:`cli.follow.submit` (the command: submit, then follow),
:mod:`cli.follow.stream` (the Server-Sent Events client, with ``httpx-sse``, and its
``Last-Event-ID`` reconnections, with ``tenacity``) and :mod:`cli.follow.view` (what is
printed, with ``rich``). This package replaced one module that held a hand-written SSE parser,
the view and a hand-written reconnect loop.
"""

from __future__ import annotations

from cli.follow.stream import FollowError, follow_events
from cli.follow.submit import SubmitOptions, parse_tool_option, submit
from cli.follow.view import FollowView

__all__ = [
    "FollowError",
    "FollowView",
    "SubmitOptions",
    "follow_events",
    "parse_tool_option",
    "submit",
]
