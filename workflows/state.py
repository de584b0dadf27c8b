"""``JobState``: everything ``AgentWorkflow`` remembers about its job, in one place.

The workflow creates one :class:`JobState` and hands it to the collaborators that read or change
it (the approval gate, the tool fan-out, the projection, the event stream, the stage clock); what
a stage produces for the next one is returned, not left here. ``progress`` is what the
``get_progress`` query answers, so a stage shows its work in it as it goes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from core.models import (
        AgentProgress,
        AgentResult,
        AgentWorkflowInput,
        ApprovalDecision,
        JobStatus,
        Tier,
    )


@dataclass
class JobState:
    """The state of one ``AgentWorkflow`` run, owned by the workflow.

    Attributes:
        inp: the workflow's input, once ``run`` started (``None`` before).
        progress: status, stage, draft, plan, tool results, usage and timings so far (the
            ``get_progress`` answer and the source of every projection and result).
        decision: the reviewer's decision, once the ``decide`` update was accepted.
        gate_open: whether the job waits at the approval gate now (``decide`` is taken only then).
        stage_started: workflow time the current stage started (``None``: no stage is timed).
        cache_key: the response-cache key of the request (stored with a completed record).
        semantic_namespace: the semantic cache's namespace of the request.
        generation_revision: the final answer's revision, stamped on every event (0 before it).
        record_revision: the number of projection writes so far (each write carries its own).
        search_attributes_set: the ``(status, tier, cost_usd)`` last upserted, if any.
        projection: the latest projection write (each write waits for the one before).
        draft_task: the draft running beside the stages, if one was started.
    """

    inp: AgentWorkflowInput | None = None
    progress: AgentProgress = field(default_factory=lambda: AgentProgress(job_id=""))
    decision: ApprovalDecision | None = None
    gate_open: bool = False
    stage_started: datetime | None = None
    cache_key: str | None = None
    semantic_namespace: str | None = None
    generation_revision: int = 0
    record_revision: int = 0
    search_attributes_set: tuple[JobStatus, Tier | None, float] | None = None
    projection: asyncio.Task[None] | None = None
    draft_task: asyncio.Task[None] | None = None

    def result(
        self, status: JobStatus, *, error: str | None = None, error_type: str | None = None
    ) -> AgentResult:
        """The job's result with ``status`` as the progress says it now (lists copied).

        Args:
            status: the result's status.
            error: the failure's message, for a FAILED result.
            error_type: the failure's type name, for a FAILED result.
        """
        p = self.progress
        return AgentResult(
            job_id=p.job_id,
            status=status,
            selection=p.selection,
            draft=p.draft,
            tool_results=list(p.tool_results),
            approval=p.approval,
            usage=list(p.usage),
            timings=list(p.timings),
            error=error,
            error_type=error_type,
            approval_record=p.approval_record,
            cache=p.cache.model_copy(deep=True) if p.cache is not None else None,
        )
