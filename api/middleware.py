"""ASGI middleware of the API: the request body limit.

Hazard: a limit enforced while the body streams in is enforced inside whatever reads the body.
FastAPI reads it inside the route and turns any exception raised there into a 400 ("There was an
error parsing the body"), except an ``HTTPException``, which it re-raises. So a chunked body
(no ``Content-Length``) over the limit answered 400 when the limit raised a plain exception; it
raises :class:`RequestBodyTooLarge`, an ``HTTPException`` with status 413, instead.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class RequestBodyTooLarge(HTTPException):
    """The request body grew past the limit while it was read (answered 413)."""

    def __init__(self, max_bytes: int) -> None:
        """Create the error for a body over ``max_bytes`` bytes."""
        super().__init__(status_code=413, detail=_too_large(max_bytes))


def _too_large(max_bytes: int) -> str:
    return f"request body exceeds {max_bytes} bytes"


BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
"""Methods whose bodies routes read; only they are limited (and document 413)."""


class BodyLimitMiddleware:
    """Answers 413 for request bodies over ``max_bytes``, before any route uses them.

    A ``Content-Length`` over the limit is refused before the app runs. A body without one
    (``Transfer-Encoding: chunked``) is counted as it streams: the read that passes the limit
    raises :class:`RequestBodyTooLarge`, which FastAPI's exception handling answers with 413;
    should it reach this middleware instead (a reader that lets it through), the middleware
    answers 413 itself while no response has started.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        """Wrap ``app``; ``max_bytes`` is the largest accepted body in bytes."""
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)  # no route reads a body there
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._reject(send)
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise RequestBodyTooLarge(self.max_bytes)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except RequestBodyTooLarge:
            if started:
                raise
            await self._reject(send)

    async def _reject(self, send: Send) -> None:
        body = ('{"detail":"' + _too_large(self.max_bytes) + '"}').encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
