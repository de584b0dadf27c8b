"""The job's database projection, written by ``AgentWorkflow`` at each status change.

Writes run one at a time, in order, beside the stages (only the terminal one is awaited), each
with a revision number so the store ignores a write older than what it holds. Each write tries a
local activity with a short budget, then a regular activity that retries until the database is
back: a database outage never holds a workflow task open and never loses an outcome.
"""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.stages import StageActivities
    from core.errors import ErrorType
    from core.models import (
        AgentProgress,
        AgentResult,
        AgentWorkflowInput,
        JobStatus,
        RecordJobInput,
    )
    from workflows import policies
    from workflows.failures import root_cause


class JobProjection:
    """Mixed into ``AgentWorkflow``, which owns the state these methods use."""

    _progress: AgentProgress
    _revision: int
    _projection: asyncio.Task[None] | None
    _cache_key: str | None
    _semantic_namespace: str | None
    _input: AgentWorkflowInput | None

    def _result(
        self, status: JobStatus, *, error: str | None = None, error_type: str | None = None
    ) -> AgentResult:
        raise NotImplementedError

    def _project(
        self, *, result: AgentResult | None = None, events_json: str | None = None
    ) -> asyncio.Task[None]:
        """Write the job's current state to the database after the previous write finishes.

        Writes run one at a time in order, beside the stages; only the final one is awaited.
        The first (RUNNING, written beside ``prepare_job``) carries the request; every write
        carries the start time, the idempotency key, the request hash and the owner; the terminal
        one also the budget reservation to settle and the job's whole event stream
        (``events_json``, see ``AgentWorkflow._finish``).
        """
        self._revision += 1
        record = RecordJobInput(
            result=result or self._result(self._progress.status),
            response_cache_key=self._cache_key if result is not None else None,
            revision=self._revision,
            events_json=events_json,
        )
        inp = self._input
        if inp is not None:
            # Small identity fields go with every write, so a first write the database refused
            # (or lost) is made whole by a later one; the request itself only with the first.
            record.created_at = self._progress.started_at
            record.idempotency_key = inp.idempotency_key
            record.request_hash = inp.request_hash
            record.owner = inp.owner
            if result is not None and result.status.is_terminal:
                record.budget = inp.budget  # settled once the outcome is recorded
                if result.status is JobStatus.COMPLETED and self._cache_key is not None:
                    record.query = inp.request.query  # the cached answer keeps its question
                    record.semantic_namespace = self._semantic_namespace
            if self._revision == 1:
                record.request = inp.request
        self._projection = asyncio.create_task(self._write_after(self._projection, record))
        return self._projection

    async def _write_after(
        self, previous: asyncio.Task[None] | None, record: RecordJobInput
    ) -> None:
        if previous is not None:
            await workflow.wait([previous])  # in order; its own failure is its own to report
        try:
            await workflow.execute_local_activity_method(
                StageActivities.record_job,
                record,
                start_to_close_timeout=policies.LOCAL_RECORD_TIMEOUT,
                schedule_to_close_timeout=policies.LOCAL_RECORD_BUDGET,
                retry_policy=policies.LOCAL_RECORD_RETRY,
            )
            return
        except (ActivityError, ApplicationError) as err:
            # A local activity's own failure reaches workflow code as the bare ApplicationError
            # (a timeout as ActivityError); either way the write moves to a regular activity.
            if self._write_refused(err):
                return
            workflow.logger.warning(
                "recording revision %d locally failed (%s); retrying as an activity until the "
                "database is back",
                record.revision,
                root_cause(err),
            )
        try:
            await workflow.execute_activity_method(
                StageActivities.record_job,
                record,
                start_to_close_timeout=policies.RECORD_TIMEOUT,
                retry_policy=policies.RECORD_RETRY,
                summary=f"record {record.result.status.value} (database was unavailable)",
            )
        except ActivityError as err:
            if not self._write_refused(err):
                raise

    @staticmethod
    def _write_refused(err: BaseException) -> bool:
        """Whether the database refused the write for good (logged; the job goes on)."""
        cause = root_cause(err)
        if isinstance(cause, ApplicationError) and cause.type == ErrorType.STORE_REJECTED.value:
            workflow.logger.error("the job database refused the job record: %s", cause.message)
            return True
        return False
