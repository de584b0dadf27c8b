"""Structured JSON logs: every line parses, carries the job, workflow, activity and trace context
where it is known (a real activity context, a real workflow run on the test server, an
OpenTelemetry span) and omits it elsewhere; credentials and bodies never reach a line."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from core.logs import CONTEXT_FIELDS, bind_job, configure_logging, make_handler
from core.settings import Settings

# ---------------------------------------------------------------------------------- helpers


class Captured:
    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]

    def one(self, message_start: str) -> dict[str, Any]:
        found = [r for r in self.lines() if r["message"].startswith(message_start)]
        assert len(found) == 1, (message_start, self.lines())
        return found[0]


@contextmanager
def capture(*logger_names: str) -> Iterator[Captured]:
    """JSON lines of the named loggers (at INFO) into a buffer; restored afterwards."""
    stream = io.StringIO()
    handler = make_handler("json", stream)
    saved = []
    for name in logger_names:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level))
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
    try:
        yield Captured(stream)
    finally:
        for logger, level in saved:
            logger.removeHandler(handler)
            logger.setLevel(level)


def activity_env(workflow_id: str, activity_type: str = "call_tool") -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        ActivityEnvironment.default_info(),
        workflow_id=workflow_id,
        workflow_run_id="run-1",
        activity_type=activity_type,
    )
    return env


# ---------------------------------------------------------------------------------- tests


def test_a_line_outside_any_context_has_the_base_fields_only() -> None:
    name = f"agentflow.test.{uuid.uuid4().hex}"
    with capture(name) as out:
        logging.getLogger(name).info("hello %s", "world")
    [line] = out.lines()
    assert line["message"] == "hello world"
    assert line["level"] == "INFO"
    assert line["logger"] == name
    stamp = datetime.fromisoformat(line["timestamp"])
    assert stamp.utcoffset() == timedelta(0)
    assert not set(CONTEXT_FIELDS) & set(line), line
    assert list(line)[:4] == ["timestamp", "level", "logger", "message"]


async def test_an_activity_s_lines_carry_its_job_workflow_and_name() -> None:
    name = f"agentflow.test.{uuid.uuid4().hex}"

    @activity.defn(name="call_tool")
    async def call_tool() -> None:
        activity.logger.info("via the activity logger")
        logging.getLogger(name).warning("via a plain logger")

    with capture(name, "temporalio.activity") as out:
        await activity_env("agent-abc123").run(call_tool)
        logging.getLogger(name).info("after the activity")
    for message in ("via the activity logger", "via a plain logger"):
        line = out.one(message)
        assert line["job_id"] == "abc123", line
        assert line["workflow_id"] == "agent-abc123"
        assert line["run_id"] == "run-1"
        assert line["activity"] == "call_tool"
        # Temporal's own extra is surfaced as fields, not dumped.
        assert "temporal_activity" not in line
    assert not set(CONTEXT_FIELDS) & set(out.one("after the activity"))


def test_a_sync_activity_and_a_workflow_that_is_not_a_job() -> None:
    name = f"agentflow.test.{uuid.uuid4().hex}"

    @activity.defn(name="purge_expired")
    def purge_expired() -> None:
        logging.getLogger(name).info("purging")

    with capture(name) as out:
        activity_env("retention-schedule", "purge_expired").run(purge_expired)
    line = out.one("purging")
    assert line["workflow_id"] == "retention-schedule"
    assert line["activity"] == "purge_expired"
    assert "job_id" not in line


def test_trace_and_span_ids_inside_a_span_only() -> None:
    name = f"agentflow.test.{uuid.uuid4().hex}"
    tracer = TracerProvider().get_tracer("test")
    with capture(name) as out:
        with tracer.start_as_current_span("outer") as span:
            logging.getLogger(name).info("in the span")
        logging.getLogger(name).info("after the span")
    context = span.get_span_context()
    inside = out.one("in the span")
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")
    assert re.fullmatch(r"[0-9a-f]{32}", inside["trace_id"])
    after = out.one("after the span")
    assert "trace_id" not in after and "span_id" not in after


def test_bind_job_names_the_job_in_api_code() -> None:
    name = f"agentflow.test.{uuid.uuid4().hex}"
    with capture(name) as out:
        with bind_job("k123"):
            logging.getLogger(name).info("starting")
        logging.getLogger(name).info("done")
    assert out.one("starting")["job_id"] == "k123"
    assert out.one("starting")["workflow_id"] == "agent-k123"
    assert "job_id" not in out.one("done")


def test_credentials_and_bodies_never_reach_a_line() -> None:
    name = f"agentflow.test.{uuid.uuid4().hex}"
    body = {"query": "my secret question", "api_key": "sk-live-1"}
    with capture(name) as out:
        logging.getLogger(name).info(
            "request",
            extra={
                "api_key": "sk-live-2",
                "Authorization": "Bearer af_1.2",
                "body": body,
                "request": object(),
                "attempt": 3,
                "tier": "small",
            },
        )
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger(name).exception("failed")
    raw = out.stream.getvalue()
    for secret in ("sk-live-1", "sk-live-2", "af_1.2", "my secret question"):
        assert secret not in raw
    line = out.one("request")
    assert line["api_key"] == "[redacted]" and line["Authorization"] == "[redacted]"
    assert "body" not in line and "request" not in line
    assert line["attempt"] == 3 and line["tier"] == "small"
    failed = out.one("failed")
    assert failed["level"] == "ERROR"
    assert "ValueError: boom" in failed["exc_info"]


@workflow.defn(name="LogsTestWorkflow")
class LogsTestWorkflow:
    @workflow.run
    async def run(self) -> str:
        workflow.logger.info("planning")
        return workflow.info().run_id


async def test_a_workflow_s_lines_carry_its_job_and_run(env: WorkflowEnvironment) -> None:
    queue = f"logs-{uuid.uuid4()}"
    job_id = uuid.uuid4().hex
    # A client without agentflow's plugin: the test needs neither its workflows nor its sandbox.
    client = await Client.connect(env.client.service_client.config.target_host)
    with capture("temporalio.workflow") as out:
        async with Worker(
            client,
            task_queue=queue,
            workflows=[LogsTestWorkflow],
            workflow_runner=UnsandboxedWorkflowRunner(),
        ):
            run_id = await client.execute_workflow(
                LogsTestWorkflow.run, id=f"agent-{job_id}", task_queue=queue
            )
    line = out.one("planning")
    assert line["job_id"] == job_id
    assert line["workflow_id"] == f"agent-{job_id}"
    assert line["run_id"] == run_id
    assert "temporal_workflow" not in line


def test_configure_logging_json_owns_the_root_and_uvicorn_lines() -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    uvicorn_loggers = [logging.getLogger(n) for n in ("uvicorn", "uvicorn.error", "uvicorn.access")]
    saved_uvicorn = [(list(lg.handlers), lg.propagate) for lg in uvicorn_loggers]
    uvicorn_access = uvicorn_loggers[2]
    saved_flags = (
        activity.logger.activity_info_on_message,
        workflow.logger.workflow_info_on_message,
    )
    stream = io.StringIO()
    try:
        settings = Settings(log_format="json")
        configure_logging(settings, stream=stream)
        configure_logging(settings, stream=stream)  # again: still one JSON handler
        ours = [h for h in root.handlers if h not in saved_handlers]
        assert len(ours) == 1
        assert uvicorn_access.propagate and not uvicorn_access.handlers
        assert not activity.logger.activity_info_on_message
        assert not workflow.logger.workflow_info_on_message
        uvicorn_access.warning('127.0.0.1:1 - "GET /healthz HTTP/1.1" 200')
        [line] = [json.loads(x) for x in stream.getvalue().splitlines()]
        assert line["logger"] == "uvicorn.access" and "GET /healthz" in line["message"]
    finally:
        for handler in list(root.handlers):
            if handler not in saved_handlers:
                root.removeHandler(handler)
        root.setLevel(saved_level)
        for lg, (handlers, propagate) in zip(uvicorn_loggers, saved_uvicorn, strict=True):
            lg.handlers[:] = handlers
            lg.propagate = propagate
        activity.logger.activity_info_on_message = saved_flags[0]
        workflow.logger.workflow_info_on_message = saved_flags[1]


def test_text_stays_as_it_was() -> None:
    stream = io.StringIO()
    logger = logging.getLogger(f"agentflow.test.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.addHandler(make_handler("text", stream))
    with bind_job("k1"):
        logger.warning("plain %d", 1)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING agentflow\.test\.\w+ plain 1\n",
        stream.getvalue(),
    )
    # With handlers already on the root (pytest's here), text mode changes nothing.
    assert logging.getLogger().handlers
    assert configure_logging(Settings(log_format="text")) is None
    with pytest.raises(ValueError, match="AGENTFLOW_LOG_FORMAT"):
        make_handler("xml")
