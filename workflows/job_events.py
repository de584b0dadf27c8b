"""The job's event stream and stage clock, as ``AgentWorkflow`` publishes them.

:class:`JobEvents` wraps the workflow's :class:`WorkflowStream` (workflow state, so replay
rebuilds it): every event is stamped with workflow time and the final answer's revision. The
terminal record stores the whole stream (:meth:`JobEvents.stored`), so a reader of a finished job
never wakes a worker. :class:`StageClock` times the stages into the job's progress and publishes
``stage_started`` and ``stage_completed``.
"""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.contrib.workflow_streams import WorkflowStream

with workflow.unsafe.imports_passed_through():
    from core.events import (
        EVENTS_TOPIC,
        EventBase,
        FinalResponse,
        ResponseError,
        StageCompleted,
        StageStarted,
    )
    from core.models import AgentResult, JobStatus, Stage, StageTiming
    from workflows.state import JobState

STREAM_PUBLISH_SIGNAL = "__temporal_workflow_stream_publish"
"""The workflow stream's publish signal (registered by ``WorkflowStream``)."""

MAX_STORED_EVENTS_CHARS = 512 * 1024
"""Largest event stream stored with the terminal record, in characters (about bytes)."""

_Event = TypeVar("_Event", bound=EventBase)


def _drop_late_publish(*_args: object) -> None:
    """Signal handler that ignores publishes after the job's outcome was decided."""


class JobEvents:
    """The job's event stream (:mod:`core.events`), stamped from the job's state.

    Created in the workflow's ``__init__``: the stream registers its signal, update and query
    handlers there.

    Args:
        state: the job's state; its ``generation_revision`` is stamped on every event.
    """

    def __init__(self, state: JobState) -> None:
        self._state = state
        self._stream = WorkflowStream()
        self._events = self._stream.topic(EVENTS_TOPIC)

    def stamp(self, event: _Event) -> _Event:
        """``event`` stamped with workflow time and the current revision; returns it."""
        event.at = workflow.now()
        event.revision = self._state.generation_revision
        return event

    def emit(self, event: EventBase) -> None:
        """Publish ``event``, stamped (:meth:`stamp`)."""
        self._events.publish(self.stamp(event))

    def publish(self, event: EventBase) -> None:
        """Publish ``event`` as it is (already stamped)."""
        self._events.publish(event)

    def close(self) -> None:
        """Take no more publishes from outside (a late token signal from an older worker).

        Called once the outcome is decided, so the outcome's offset is the one stored with
        the record.
        """
        workflow.set_signal_handler(STREAM_PUBLISH_SIGNAL, _drop_late_publish)

    def detach_pollers(self) -> None:
        """Hand the last events to subscribers waiting in a poll update.

        Those are API processes from before the event hub; no update is cut off by the
        workflow's end.
        """
        self._stream.detach_pollers()

    def stored(self, outcome: EventBase) -> str | None:
        """The job's whole event stream as a JSON array, ``outcome`` last, offsets filled in.

        Read from the stream's own state, so events published by others (token signals of
        workers from before the token side channel) keep their offsets too.

        Returns:
            The JSON array, or ``None`` past :data:`MAX_STORED_EVENTS_CHARS`.
        """
        state = self._stream.get_state()
        events: list[str] = []
        offset = state.base_offset
        for item in state.log:
            if item.topic == EVENTS_TOPIC:
                data = json.loads(Payload.FromString(base64.b64decode(item.data)).data)
                data["offset"] = offset
                events.append(json.dumps(data, separators=(",", ":")))
            offset += 1
        last = outcome.model_copy(update={"offset": offset})
        events.append(last.model_dump_json())
        stored = "[" + ",".join(events) + "]"
        if len(stored) > MAX_STORED_EVENTS_CHARS:
            # Kept out of the record's input (and its history, if the write falls back to a
            # regular activity); readers of the finished job then read the closed workflow.
            return None
        return stored


def outcome_event(result: AgentResult) -> FinalResponse | ResponseError:
    """The job's last event for ``result`` (unstamped).

    Returns:
        ``final_response`` for a completed job with an answer, else ``response_error``.
    """
    if result.status is JobStatus.COMPLETED and result.answer is not None:
        final = next((u for u in reversed(result.usage) if u.purpose == "final"), None)
        return FinalResponse(
            job_id=result.job_id,
            answer=result.answer,
            simulated=result.simulated,
            response_cache_hit=result.response_cache_hit,
            tier=final.tier if final is not None else None,
            escalated_to=result.escalated_to,
            usage=result.usage,
            total_cost_usd=round(result.total_cost_usd, 8),
        )
    return ResponseError(
        job_id=result.job_id,
        status=result.status,
        error=result.error,
        error_type=result.error_type,
    )


class StageClock:
    """Times the job's stages into its progress and publishes their start and end.

    Args:
        state: the job's state (``progress.stage``, ``progress.timings``, ``stage_started``).
        events: where ``stage_started`` and ``stage_completed`` go.
    """

    def __init__(self, state: JobState, events: JobEvents) -> None:
        self._state = state
        self._events = events

    def enter(self, stage: Stage, *, publish: bool = True, already_ms: float = 0.0) -> None:
        """Close the current stage (timing and ``stage_completed``) and start ``stage``.

        Args:
            stage: the stage the job enters; ``DONE`` publishes no ``stage_started``.
            publish: False records the closed stage's timing without publishing
                ``stage_completed``.
            already_ms: how long ``stage`` already ran elsewhere (in ``prepare_job``), in ms:
                added to its timing when it closes.
        """
        now = workflow.now()
        progress = self._state.progress
        job_id = progress.job_id
        started = self._state.stage_started
        if started is not None:
            elapsed = round((now - started).total_seconds() * 1000, 3)
            previous = progress.stage
            progress.timings.append(StageTiming(stage=previous, duration_ms=elapsed))
            if publish:
                self._events.emit(
                    StageCompleted(job_id=job_id, stage=previous, duration_ms=elapsed)
                )
        progress.stage = stage
        self._state.stage_started = now - timedelta(milliseconds=already_ms)
        if stage is not Stage.DONE:
            self._events.emit(StageStarted(job_id=job_id, stage=stage))

    def carve_out(self, stage: Stage, duration_ms: float) -> None:
        """Record ``stage`` as the first ``duration_ms`` of the current stage (no events).

        For a stage an activity ran at the start of the current one (compression inside the
        generation activity): its timing is recorded before the current stage's, and the
        current stage's clock starts that much later, so no millisecond is counted twice.
        """
        self._state.progress.timings.append(StageTiming(stage=stage, duration_ms=duration_ms))
        if self._state.stage_started is not None:
            self._state.stage_started += timedelta(milliseconds=duration_ms)

    def ran_elsewhere(self, duration_ms: dict[str, float]) -> None:
        """Record stages that one activity ran, with the timings it measured; stop the clock.

        The current stage (the first of them, already started) gets its ``stage_completed``;
        each later one its ``stage_started`` and ``stage_completed``.

        Args:
            duration_ms: milliseconds per :class:`core.models.Stage` value, in the order run.
        """
        progress = self._state.progress
        current = progress.stage
        for name, ms in duration_ms.items():
            stage = Stage(name)
            if stage is not current:
                self._events.emit(StageStarted(job_id=progress.job_id, stage=stage))
            progress.timings.append(StageTiming(stage=stage, duration_ms=ms))
            self._events.emit(StageCompleted(job_id=progress.job_id, stage=stage, duration_ms=ms))
        self._state.stage_started = None
