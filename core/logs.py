"""Logging set-up: today's text lines, or one JSON object per line with job and trace context.

With ``AGENTFLOW_LOG_FORMAT=json`` every line is a JSON object with ``timestamp`` (ISO 8601, UTC),
``level``, ``logger`` and ``message``, plus, when known, ``job_id``, ``workflow_id``, ``run_id``,
``activity``, ``trace_id`` and ``span_id`` (absent when unknown, never ``null``). The context
comes, in order, from:

- the ``extra`` Temporal's own loggers attach (``temporal_activity`` from ``activity.logger``,
  ``temporal_workflow`` from ``workflow.logger``), as the record was made in that context;
- the activity running on this thread or task (``activity.in_activity()``: its info), or the
  workflow (``workflow.in_workflow()``), so plain ``logging`` calls in activities get it too;
- :func:`bind_job` in the API, for lines about one job outside Temporal;
- the current OpenTelemetry span (with ``AGENTFLOW_TRACING`` on), as 32 and 16 hex digits.

``job_id`` is the workflow id without ``agent-`` (:func:`core.ids.workflow_id_for`); other
workflows (retention) have a ``workflow_id`` and no ``job_id``.

Never log secrets: the JSON lines carry the fields above, the exception text, and the ``extra``
values a call passes that are plain scalars (strings, numbers, booleans). Dicts, lists and
objects in ``extra`` (a request, a model, a body) are dropped rather than serialized, and an
``extra`` name that looks like a credential (``authorization``, ``api_key``, ``password``,
``secret``, ``cookie``) is replaced by ``"[redacted]"``. Temporal's loggers append their context
to each message as ``({...})``; in JSON mode that suffix is turned off, the fields carry it.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import IO, Any

from opentelemetry import trace
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter
from temporalio import activity, workflow

from core.ids import WORKFLOW_ID_PREFIX
from core.settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
"""The text format (the worker's since the start)."""

CONTEXT_FIELDS = ("job_id", "workflow_id", "run_id", "activity", "trace_id", "span_id")
"""Context fields a JSON line may carry, in this order after the base fields."""

_TEMPORAL_EXTRAS = ("temporal_workflow", "temporal_activity", "workflow_info", "activity_info")
"""Objects Temporal's loggers put on records; surfaced as context fields, never dumped."""

_SECRET_NAME = re.compile(r"authorization|api_?key|password|passwd|secret|cookie|credential", re.I)

_bound_job: ContextVar[str | None] = ContextVar("agentflow_log_job_id", default=None)

_HANDLER_MARK = "_agentflow_handler"


@contextmanager
def bind_job(job_id: str) -> Iterator[None]:
    """Within the block, log lines of this task carry ``job_id`` and its ``workflow_id``.

    For API code working on one job; activities and workflows get theirs automatically.
    """
    token = _bound_job.set(job_id)
    try:
        yield
    finally:
        _bound_job.reset(token)


def _from_workflow_id(workflow_id: object) -> dict[str, str]:
    if not isinstance(workflow_id, str) or not workflow_id:
        return {}
    fields = {"workflow_id": workflow_id}
    if workflow_id.startswith(WORKFLOW_ID_PREFIX) and len(workflow_id) > len(WORKFLOW_ID_PREFIX):
        fields["job_id"] = workflow_id[len(WORKFLOW_ID_PREFIX) :]
    return fields


def _temporal_context(record: logging.LogRecord | None) -> dict[str, str]:
    details: Any = getattr(record, "temporal_activity", None)
    if isinstance(details, Mapping):
        fields = _from_workflow_id(details.get("workflow_id"))
        if details.get("workflow_run_id"):
            fields["run_id"] = str(details["workflow_run_id"])
        if details.get("activity_type"):
            fields["activity"] = str(details["activity_type"])
        return fields
    details = getattr(record, "temporal_workflow", None)
    if isinstance(details, Mapping):
        fields = _from_workflow_id(details.get("workflow_id"))
        if details.get("run_id"):
            fields["run_id"] = str(details["run_id"])
        return fields
    if activity.in_activity():
        info = activity.info()
        fields = _from_workflow_id(info.workflow_id)
        if info.workflow_run_id:
            fields["run_id"] = info.workflow_run_id
        fields["activity"] = info.activity_type
        return fields
    if workflow.in_workflow():
        winfo = workflow.info()
        return {**_from_workflow_id(winfo.workflow_id), "run_id": winfo.run_id}
    job_id = _bound_job.get()
    if job_id is not None:
        return {"job_id": job_id, "workflow_id": f"{WORKFLOW_ID_PREFIX}{job_id}"}
    return {}


def log_context(record: logging.LogRecord | None = None) -> dict[str, str]:
    """The context fields known where ``record`` was made (or here, without one).

    Returns:
        A subset of :data:`CONTEXT_FIELDS` with string values; unknown ones are absent.
    """
    fields = _temporal_context(record)
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        fields["trace_id"] = format(span.trace_id, "032x")
        fields["span_id"] = format(span.span_id, "016x")
    return fields


class ContextFilter(logging.Filter):
    """Adds :func:`log_context`'s fields to each record it sees (never drops one).

    Attach it to a handler, so records from every logger that reach the handler get it. It
    runs on the thread (and in the task) that logged, where the context is known.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Set the context fields on ``record``; a field the call set itself is kept."""
        for name, value in log_context(record).items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


class AgentflowJsonFormatter(JsonFormatter):
    """One JSON object per record: base fields, context fields, exception, scalar extras.

    See the module docstring for what is kept, dropped and redacted.
    """

    def __init__(self) -> None:
        """Create the formatter (``timestamp``, ``level``, ``logger``, ``message`` first)."""
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            reserved_attrs=[*RESERVED_ATTRS, *_TEMPORAL_EXTRAS],
            timestamp=True,
        )

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        """Order the fields; drop non-scalar extras; redact credential-like names."""
        out: dict[str, Any] = {}
        for key in ("timestamp", "level", "logger", "message", *CONTEXT_FIELDS):
            if log_data.get(key) is not None:
                out[key] = log_data[key]
        for key, value in log_data.items():
            if key in out or value is None:
                continue
            if key in ("exc_info", "stack_info"):
                out[key] = value
            elif _SECRET_NAME.search(key):
                out[key] = "[redacted]"
            elif isinstance(value, str | int | float | bool):
                out[key] = value
        return out


def make_handler(log_format: str, stream: IO[str] | None = None) -> logging.Handler:
    """A stream handler writing ``log_format`` lines (``text`` or ``json``) to ``stream``.

    Args:
        log_format: ``text`` (:data:`TEXT_FORMAT`) or ``json`` (:class:`AgentflowJsonFormatter`
            with :class:`ContextFilter`).
        stream: where to write (default standard error).

    Raises:
        ValueError: another ``log_format``.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if log_format == "json":
        handler.setFormatter(AgentflowJsonFormatter())
        handler.addFilter(ContextFilter())
    elif log_format == "text":
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    else:
        raise ValueError(f"AGENTFLOW_LOG_FORMAT must be text or json, got {log_format!r}")
    setattr(handler, _HANDLER_MARK, True)
    return handler


def configure_logging(
    settings: Settings, *, level: int = logging.INFO, stream: IO[str] | None = None
) -> logging.Handler | None:
    """Set up the root logger as ``settings.log_format`` says (once per process is enough).

    ``text`` keeps today's behaviour: ``logging.basicConfig`` with :data:`TEXT_FORMAT`, which
    does nothing when the root logger already has a handler (pytest's, uvicorn's setup).
    ``json`` replaces the root handler installed by an earlier call (not others) with a JSON one,
    routes uvicorn's loggers through it, and turns off the ``({...})`` context suffix
    Temporal's loggers add to messages.

    Args:
        settings: ``log_format``.
        level: the root logger's level.
        stream: where lines go (default standard error).

    Returns:
        The handler installed, or ``None`` when ``text`` found the root already configured.
    """
    root = logging.getLogger()
    if settings.log_format == "text":
        if root.handlers:
            return None
        handler = make_handler("text", stream)
        root.addHandler(handler)
        root.setLevel(level)
        return handler
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    handler = make_handler("json", stream)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    activity.logger.activity_info_on_message = False
    workflow.logger.workflow_info_on_message = False
    return handler
