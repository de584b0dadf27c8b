"""Model calls of ``AgentWorkflow``: the draft, the final answer and its cascade."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from activities.generation import ModelActivities
    from core.events import ESCALATION_REVISION_BASE, EventBase, InitialResponse
    from core.models import (
        AgentProgress,
        AgentWorkflowInput,
        ContextItem,
        GenerateInput,
        GenerateResult,
        SelectModelResult,
        Stage,
        Tier,
    )
    from workflows import policies
    from workflows.failures import root_cause


class ModelCalls:
    """Mixed into ``AgentWorkflow``, which owns the state these methods use."""

    _progress: AgentProgress
    _draft_task: asyncio.Task[None] | None

    def _enter(self, stage: Stage, *, publish: bool = True) -> None:
        raise NotImplementedError

    def _emit(self, event: EventBase) -> None:
        raise NotImplementedError

    @staticmethod
    def _draft_helps(inp: AgentWorkflowInput, selection: SelectModelResult) -> bool:
        """A small-tier draft is worth its cost only when the final answer comes from above small.

        That also covers a pinned small tier (the final answer is itself a small-tier answer).
        """
        return inp.draft_enabled and selection.tier is not Tier.SMALL

    async def _draft(self, inp: AgentWorkflowInput, selection: SelectModelResult) -> None:
        """Quick small-tier answer; a failure is logged and the job goes on without it."""
        try:
            draft = await self._generate(
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
                return
            workflow.logger.warning("draft failed, continuing without it: %s", root_cause(err))
            return
        self._progress.draft = draft.text
        self._progress.usage.append(draft.usage)
        request = self._progress.approval_request
        if request is not None and request.draft is None:
            request.draft = draft.text  # a reviewer who looks now sees it
        self._emit(
            InitialResponse(
                job_id=inp.job_id,
                text=draft.text,
                tier=draft.usage.tier,
                simulated=draft.usage.simulated,
            )
        )

    def _stop_draft(self) -> None:
        """Cancel the draft if it is still running: nobody will read it now."""
        if self._draft_task is not None and not self._draft_task.done():
            self._draft_task.cancel()

    async def _generate_final(
        self, inp: AgentWorkflowInput, selection: SelectModelResult, items: list[ContextItem]
    ) -> tuple[GenerateResult, Tier | None]:
        """The selected tier's answer, or the escalation tier's when it fails (the cascade)."""
        self._enter(Stage.GENERATION)
        gen = GenerateInput(
            job_id=inp.job_id,
            purpose="final",
            tier=selection.tier,
            query=inp.request.query,
            context=items,
            stream=inp.stream_tokens,
            owner=inp.owner,
        )
        try:
            return await self._generate(gen, inp, selection), None
        except ActivityError as err:
            if selection.escalation_tier is None or is_cancelled_exception(err):
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
            return await self._generate(escalated, inp, selection), escalated_to

    async def _generate(
        self,
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
