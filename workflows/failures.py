"""Reading activity failures: the typed cause an activity ended with, as data for the job."""

from __future__ import annotations

from temporalio.exceptions import ApplicationError

from core.models import ToolCall, ToolFailure


def root_cause(error: BaseException) -> BaseException:
    """The first typed ``ApplicationError`` in the cause chain, else the deepest cause.

    An activity failure arrives as ``ActivityError`` -> ``ApplicationError(type=...)`` ->
    (the activity's own exception chain); the typed error is the one to branch and report on.
    """
    cause: BaseException | None = error
    deepest = error
    while cause is not None:
        if isinstance(cause, ApplicationError) and cause.type:
            return cause
        deepest = cause
        cause = cause.__cause__
    return deepest


def failure_of(call: ToolCall, error: BaseException) -> ToolFailure:
    """A :class:`ToolFailure` for ``call`` from the error its activity ended with.

    The recorded type is the typed one from the chain, e.g. ``ToolTransient`` after the last
    retry, or ``TimeoutError`` when the tool outran its start-to-close timeout.
    """
    cause = root_cause(error)
    if isinstance(cause, ApplicationError) and cause.type:
        error_type = cause.type
    else:
        error_type = type(cause).__name__
    message = getattr(cause, "message", None) or str(cause) or error_type
    return ToolFailure(call_id=call.id, name=call.name, error_type=error_type, error=message)
