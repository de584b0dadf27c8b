"""Tool planning by a (scripted) real-tier model, and the fallback to the rules."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client

from core.catalog import ModelCatalog, ModelSpec
from core.models import AgentRequest, AgentResult, JobStatus, Tier, ToolSuccess
from core.settings import Settings
from domain.model_planner import PlanParseError, parse_plan
from infra.providers import ChatMessage, ProviderRegistry, ScriptedProvider, SimulatedProvider
from tests.workflow_support import agent_worker


def test_parse_plan_accepts_fenced_json_and_numbers_ids() -> None:
    text = '```json\n[{"name": "calculator", "parameters": {"expression": "2+2"}}]\n```'
    calls = parse_plan(text)
    assert [(c.id, c.name, c.parameters) for c in calls] == [
        ("model-1", "calculator", {"expression": "2+2"})
    ]
    assert parse_plan("[]") == []


@pytest.mark.parametrize(
    "text",
    ["not json", '{"name": "x"}', '[{"parameters": {}}]', '[{"name": "x", "parameters": 3}]'],
)
def test_parse_plan_refuses_malformed_answers(text: str) -> None:
    with pytest.raises(PlanParseError):
        parse_plan(text)


def _catalog_with_real_small() -> ModelCatalog:
    models = [
        m.model_copy(update={"provider": "openai", "model_id": "tiny-planner"})
        if m.tier is Tier.SMALL
        else m
        for m in ModelCatalog.default().models
    ]
    return ModelCatalog(models=models)


async def _run(
    client: Client, redis_url: str, settings: Settings, tmp_path: Path, script: ScriptedProvider
) -> AgentResult:
    providers = ProviderRegistry({"simulated": SimulatedProvider(0), "openai": script})
    async with agent_worker(
        client,
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'jobs.db'}",
        settings=settings,
        catalog=_catalog_with_real_small(),
        providers=providers,
    ) as h:
        return await h.run(
            AgentRequest(query=f"How much is six times seven? {uuid.uuid4().hex[:6]}")
        )


async def test_model_plans_the_tools(
    client: Client, redis_url: str, settings: Settings, tmp_path: Path
) -> None:
    def model(spec: ModelSpec, messages: list[ChatMessage], max_tokens: int) -> str:
        if "You decide which tools" in messages[0].content:
            return json.dumps(
                [
                    {"name": "calculator", "parameters": {"expression": "6*7"}},
                    {"name": "no_such_tool", "parameters": {}},
                ]
            )
        return "Forty-two."

    result = await _run(client, redis_url, settings, tmp_path, ScriptedProvider(model))
    assert result.status is JobStatus.COMPLETED
    tool_results = result.tool_results
    calc = next(r for r in tool_results if r.call_id == "model-1")
    assert isinstance(calc, ToolSuccess) and calc.value["value"] == 42
    rejected = [r for r in tool_results if r.call_id == "plan"]
    assert rejected and "no_such_tool" in rejected[0].error
    # Selection runs after planning: the calculator answers the question, so the small tier
    # reports its result (tool-answered) and no draft is needed.
    assert result.selection is not None and result.selection.tier is Tier.SMALL
    assert "tool-answered" in result.selection.reason
    assert sorted(u.purpose for u in result.usage) == ["final", "plan"]


async def test_unusable_plan_falls_back_to_the_rules(
    client: Client, redis_url: str, settings: Settings, tmp_path: Path
) -> None:
    def model(spec: ModelSpec, messages: list[ChatMessage], max_tokens: int) -> str:
        return "I would use a calculator, probably."

    result = await _run(client, redis_url, settings, tmp_path, ScriptedProvider(model))
    assert result.status is JobStatus.COMPLETED
    assert "plan" not in [u.purpose for u in result.usage]
