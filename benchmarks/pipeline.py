"""The baseline most benchmarks compare against: agentflow's stages as a plain asyncio pipeline.

Same activity code, same Redis, same database, same order and concurrency as
:class:`workflows.agent.AgentWorkflow` (draft alongside selection, plan and tools; parallel-safe
tools gathered), but called directly in one process: no Temporal, no durability, no retries,
no history. What a hand-rolled service would do.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from activities.agent import AgentActivities

from core.models import (
    AgentRequest,
    AgentResult,
    CompressContextInput,
    GenerateInput,
    JobStatus,
    PlanToolsInput,
    RecordJobInput,
    ResponseCacheKeyInput,
    RunToolInput,
    SelectModelInput,
    Tier,
    ToolResult,
)
from core.settings import Settings
from worker import build_activities


def pipeline_activities(
    redis_url: str, database_url: str, workdir: Path, latency_scale: float = 0.0
) -> AgentActivities:
    """The activity class wired as a worker would wire it, for in-process calls."""
    settings = Settings(
        redis_url=redis_url,
        database_url=database_url,
        sql_database_path=workdir / "shop.sqlite",
        data_dir=workdir,
        simulated_latency_scale=latency_scale,
    )
    activities, _cache, _providers = build_activities(settings)
    return activities


async def run_pipeline(acts: AgentActivities, job_id: str, req: AgentRequest) -> AgentResult:
    """Run one request through the stages in the workflow's order, without Temporal.

    Returns:
        The job's result (COMPLETED), recorded in the database like a workflow's.
    """
    check = await acts.check_response_cache(
        ResponseCacheKeyInput(
            query=req.query,
            context=req.context,
            tool_calls=req.tool_calls,
            model_tier=req.model_tier,
        )
    )
    if check.hit is not None:
        result = AgentResult(
            job_id=job_id,
            status=JobStatus.COMPLETED,
            answer=check.hit.answer,
            simulated=check.hit.simulated,
            response_cache_hit=True,
        )
        await acts.record_job(RecordJobInput(result=result, response_cache_key=check.key))
        return result
    draft = asyncio.create_task(
        acts.generate_answer(
            GenerateInput(
                job_id=job_id, purpose="draft", tier=Tier.SMALL, query=req.query, max_tokens=256
            )
        )
    )
    selection = await acts.select_model(
        SelectModelInput(
            query=req.query,
            tool_call_names=[c.name for c in req.tool_calls],
            context_items=len(req.context),
            pinned_tier=None if req.model_tier == "auto" else Tier(req.model_tier),
        )
    )
    plan = await acts.plan_tools(PlanToolsInput(query=req.query, tool_calls=req.tool_calls))
    parallel = [p for p in plan.planned if p.parallel_safe]
    results: list[ToolResult] = list(
        await asyncio.gather(
            *(acts.run_tool(RunToolInput(job_id=job_id, call=p.call)) for p in parallel)
        )
    )
    for p in plan.planned:
        if not p.parallel_safe:
            results.append(await acts.run_tool(RunToolInput(job_id=job_id, call=p.call)))
    compressed = await acts.compress_context(
        CompressContextInput(
            query=req.query,
            items=req.context,
            tool_results=results,
            max_tokens=req.max_context_tokens,
        )
    )
    draft_result = await draft
    final = await acts.generate_answer(
        GenerateInput(
            job_id=job_id,
            purpose="final",
            tier=selection.tier,
            query=req.query,
            context=compressed.items,
        )
    )
    result = AgentResult(
        job_id=job_id,
        status=JobStatus.COMPLETED,
        answer=final.text,
        simulated=final.usage.simulated,
        selection=selection,
        draft=draft_result.text,
        tool_results=results,
        compression=compressed.summary,
        usage=[draft_result.usage, final.usage],
    )
    await acts.record_job(RecordJobInput(result=result, response_cache_key=check.key))
    return result
