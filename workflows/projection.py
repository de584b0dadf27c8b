"""The job's projections, written by ``AgentWorkflow`` at each status change.

Two views of the job's state leave the workflow: its database record and its ``Agent*`` search
attributes. Record writes run one at a time, in order, beside the stages (only the terminal one
is awaited), each with a revision number so the store ignores a write older than what it holds.
Each write tries a local activity with a short budget, then a regular activity that retries until
the database is back: a database outage never holds a workflow task open and never loses an
outcome.
"""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.stages import StageActivities
    from core import search_attributes
    from core.errors import ErrorType
    from core.models import AgentResult, JobStatus, RecordJobInput
    from workflows import policies
    from workflows.failures import root_cause
    from workflows.state import JobState


class JobProjection:
    """Writes the job's state to the job database and to its search attributes.

    Args:
        state: the job's state, read at each write; its ``record_revision`` and ``projection``
            (the latest write) are kept up to date here.
    """

    def __init__(self, state: JobState) -> None:
        self._state = state

    def write(
        self, *, result: AgentResult | None = None, events_json: str | None = None
    ) -> asyncio.Task[None]:
        """Write the job's current state to the database after the previous write finishes.

        Writes run one at a time in order, beside the stages; only the final one is awaited.
        See :meth:`next_record` for what each write carries.

        Args:
            result: the terminal result to record (``None``: the state's current status).
            events_json: the job's whole event stream as a JSON array, with the terminal result
                (see :meth:`workflows.job_events.JobEvents.stored`).

        Returns:
            The write's task (awaited only for the terminal write).
        """
        return self.schedule(self.next_record(result=result, events_json=events_json))

    def schedule(self, record: RecordJobInput) -> asyncio.Task[None]:
        """Write ``record`` (from :meth:`next_record`) after the previous write finishes."""
        state = self._state
        state.projection = asyncio.create_task(_write_after(state.projection, record))
        return state.projection

    def next_record(
        self, *, result: AgentResult | None = None, events_json: str | None = None
    ) -> RecordJobInput:
        """The job's next record, with the next revision number, not yet written.

        The first (RUNNING, written inside ``prepare_job``) carries the request; every record
        carries the start time, the idempotency key, the request hash and the owner; the terminal
        one also the budget reservation to settle and the job's whole event stream.

        Args:
            result: the terminal result to record (``None``: the state's current status).
            events_json: the job's whole event stream as a JSON array, with the terminal result.
        """
        state = self._state
        state.record_revision += 1
        record = RecordJobInput(
            result=result or state.result(state.progress.status),
            response_cache_key=state.cache_key if result is not None else None,
            revision=state.record_revision,
            events_json=events_json,
        )
        inp = state.inp
        if inp is not None:
            # Small identity fields go with every write, so a first write the database refused
            # (or lost) is made whole by a later one; the request itself only with the first.
            record.created_at = state.progress.started_at
            record.idempotency_key = inp.idempotency_key
            record.request_hash = inp.request_hash
            record.owner = inp.owner
            if result is not None and result.status.is_terminal:
                record.budget = inp.budget  # settled once the outcome is recorded
                if result.status is JobStatus.COMPLETED and state.cache_key is not None:
                    record.query = inp.request.query  # the cached answer keeps its question
                    record.semantic_namespace = state.semantic_namespace
            if state.record_revision == 1:
                record.request = inp.request
        return record

    def upsert_search_attributes(self, status: JobStatus) -> None:
        """Upsert the ``Agent*`` search attributes when the job sets them and they changed.

        Args:
            status: the status to show; tier and cost come from the state's progress.
        """
        state = self._state
        if state.inp is None or not state.inp.search_attributes:
            return
        p = state.progress
        tier = next((u.tier for u in reversed(p.usage) if u.purpose == "final"), None) or (
            p.selection.tier if p.selection is not None else None
        )
        cost = float(round(sum(u.cost_usd for u in p.usage), 6))
        if state.search_attributes_set == (status, tier, cost):
            return
        state.search_attributes_set = (status, tier, cost)
        workflow.upsert_search_attributes(
            search_attributes.updates(status, tier=tier, cost_usd=cost)
        )


async def _write_after(previous: asyncio.Task[None] | None, record: RecordJobInput) -> None:
    """Record ``record`` once ``previous`` is done: locally, else as a regular activity."""
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
        if _write_refused(err):
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
        if not _write_refused(err):
            raise


def _write_refused(err: BaseException) -> bool:
    """Whether the database refused the write for good (logged; the job goes on)."""
    cause = root_cause(err)
    if isinstance(cause, ApplicationError) and cause.type == ErrorType.STORE_REJECTED.value:
        workflow.logger.error("the job database refused the job record: %s", cause.message)
        return True
    return False
