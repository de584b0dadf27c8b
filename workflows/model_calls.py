"""Model calls of ``AgentWorkflow``: the draft, the final answer and its cascade.

Each call is a ``generate_answer`` activity whose start-to-close fits the tier (the selection's
attempt timeout, else the input's model timeout, plus a margin).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from activities.generation import ModelActivities
    from core.errors import ErrorType
    from core.events import ESCALATION_REVISION_BASE
    from core.models import (
        AgentWorkflowInput,
        CompressContextInput,
        ContextItem,
        GenerateInput,
        GenerateResult,
        SelectModelResult,
        Tier,
    )
    from workflows import policies
    from workflows.failures import root_cause


def draft_helps(inp: AgentWorkflowInput, selection: SelectModelResult) -> bool:
    """Whether a small-tier draft is worth its cost: only when the final tier is above small.

    That also covers a pinned small tier (the final answer is itself a small-tier answer).
    """
    return inp.draft_enabled and selection.tier is not Tier.SMALL


async def generate_draft(
    inp: AgentWorkflowInput, selection: SelectModelResult
) -> GenerateResult | None:
    """A quick small-tier answer to the request.

    Returns:
        The draft, or ``None`` when it failed (logged; the job goes on without it) or was
        cancelled.
    """
    try:
        return await _generate(
            GenerateInput(
                job_id=inp.job_id,
                purpose="draft",
                tier=Tier.SMALL,
                query=inp.request.query,
                max_tokens=inp.draft_max_tokens,
                owner=inp.owner,
            ),
            inp,
            selection,
            retry=policies.DRAFT_RETRY,
        )
    except ActivityError as err:
        if is_cancelled_exception(err):
            return None
        workflow.logger.warning("draft failed, continuing without it: %s", root_cause(err))
        return None


async def generate_final(
    inp: AgentWorkflowInput,
    selection: SelectModelResult,
    items: list[ContextItem] | None = None,
    *,
    compress: CompressContextInput | None = None,
) -> tuple[GenerateResult, Tier | None]:
    """The selected tier's answer, or the escalation tier's when it fails (the cascade).

    Args:
        inp: the workflow's input (request, timeouts, streaming).
        selection: the selected tier, its escalation tier and per-tier attempt timeouts.
        items: the compressed context (shapes 0 and 1).
        compress: the compression stage for the activity to run first (shape 2 on).

    Returns:
        ``(answer, escalated_to)``: ``escalated_to`` is the escalation tier when it answered,
        else ``None``.

    Raises:
        ActivityError: the last tier tried failed, or the job was cancelled. A failure of the
            compression itself (``ContextBudgetExceeded``, ``BlobNotFound``) is raised without
            escalating: another tier would compress the same input the same way.
    """
    gen = GenerateInput(
        job_id=inp.job_id,
        purpose="final",
        tier=selection.tier,
        query=inp.request.query,
        context=items or [],
        stream=inp.stream_tokens,
        owner=inp.owner,
        compress=compress,
    )
    try:
        return await _generate(gen, inp, selection), None
    except ActivityError as err:
        if (
            selection.escalation_tier is None
            or is_cancelled_exception(err)
            or _compression_failed(err)
        ):
            raise
        escalated_to = selection.escalation_tier
        workflow.logger.warning(
            "tier %s failed (%s); escalating to %s",
            selection.tier,
            root_cause(err),
            escalated_to,
        )
        escalated = gen.model_copy(
            update={"tier": escalated_to, "revision_base": ESCALATION_REVISION_BASE}
        )
        return await _generate(escalated, inp, selection), escalated_to


def _compression_failed(err: ActivityError) -> bool:
    """Whether ``err`` is the compression stage's own failure (it does not depend on the tier)."""
    cause = root_cause(err)
    return isinstance(cause, ApplicationError) and cause.type in _COMPRESSION_ERRORS


_COMPRESSION_ERRORS = frozenset(
    {
        ErrorType.CONTEXT_BUDGET_EXCEEDED.value,
        ErrorType.BLOB_NOT_FOUND.value,
        ErrorType.COMPRESSION_UNAVAILABLE.value,
    }
)


async def _generate(
    gen: GenerateInput,
    inp: AgentWorkflowInput,
    selection: SelectModelResult,
    retry: RetryPolicy = policies.MODEL_RETRY,
) -> GenerateResult:
    attempt_s = selection.attempt_timeouts_s.get(gen.tier)
    attempt = timedelta(seconds=attempt_s) if attempt_s else inp.model_timeout
    start_to_close = attempt + policies.MODEL_ATTEMPT_MARGIN
    return await workflow.execute_activity_method(
        ModelActivities.generate_answer,
        gen,
        start_to_close_timeout=start_to_close,
        schedule_to_close_timeout=policies.model_schedule_to_close(start_to_close, retry),
        heartbeat_timeout=inp.heartbeat_timeout,
        retry_policy=retry,
        summary=f"{gen.purpose} on {gen.tier} tier",
    )
