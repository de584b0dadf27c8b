"""Translate domain errors into the Temporal failures activities raise.

Activities call :func:`to_application_error` at their boundary, so the workflow branches on
stable type names and Temporal's retry policy sees what is worth retrying.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.exceptions import ApplicationError

from core.errors import AgentflowError


def to_application_error(exc: AgentflowError) -> ApplicationError:
    """The Temporal failure an activity raises for a domain error.

    Args:
        exc: a domain error; its ``type`` becomes the ``ApplicationError.type`` and its
            ``retryable`` flag the inverse of ``non_retryable``.

    Returns:
        ``ApplicationError(exc.message, type=str(exc.type), non_retryable=not exc.retryable)``,
        with ``next_retry_delay`` set from ``retry_after_s`` (seconds) when the error carries one,
        so Temporal's next attempt honours the endpoint's Retry-After.
    """
    retry_after_s = getattr(exc, "retry_after_s", None)
    next_retry_delay = (
        timedelta(seconds=retry_after_s) if isinstance(retry_after_s, int | float) else None
    )
    return ApplicationError(
        exc.message,
        type=str(exc.type),
        non_retryable=not exc.retryable,
        next_retry_delay=next_retry_delay,
    )
