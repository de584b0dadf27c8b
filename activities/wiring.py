"""Activities: thin wrappers that turn contracts into calls on the infrastructure and the tools.

Three groups, each a class whose constructor takes its clients so the worker wires them once:
:class:`~activities.stages.StageActivities` (the short stages, run as local activities),
:class:`~activities.generation.ModelActivities` and :class:`~activities.tool_calls.ToolActivities`
(regular activities that heartbeat). :class:`AgentActivities` holds one of each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from activities.generation import ModelActivities
from activities.stages import StageActivities
from activities.token_stream import TokenStreamSettings
from activities.tool_calls import ToolActivities
from core.catalog import ModelCatalog
from core.tools import ToolRegistry
from domain.routing import Router
from infra.cache import RedisCache
from infra.coalesce import Coalescer
from infra.jobs import JobStore
from infra.providers import ProviderRegistry
from infra.quotas import Quotas

if TYPE_CHECKING:
    from infra.semantic.store import SemanticCache


@dataclass(frozen=True)
class AgentActivities:
    """Every activity of ``AgentWorkflow``, wired to one worker's clients."""

    stages: StageActivities
    model: ModelActivities
    tools: ToolActivities

    @classmethod
    def build(
        cls,
        *,
        catalog: ModelCatalog,
        providers: ProviderRegistry,
        tools: ToolRegistry,
        cache: RedisCache,
        store: JobStore,
        response_cache_ttl_s: int = 3600,
        planner_timeout_s: float = 8.0,
        quotas: Quotas | None = None,
        stream: TokenStreamSettings | None = None,
        router: Router | None = None,
        llm_router_timeout_s: float | None = None,
        semantic: SemanticCache | None = None,
        semantic_ttl_s: int = 3600,
        component_cache_ttl_s: int = 3600,
        coalescer: Coalescer | None = None,
    ) -> AgentActivities:
        """Wire the three groups to the given clients (no I/O).

        Args:
            catalog: tier -> model spec.
            providers: model providers.
            tools: the tool registry.
            cache: Redis for the response and tool-result caches.
            store: job records.
            response_cache_ttl_s: TTL of cached final answers, in seconds.
            planner_timeout_s: budget of the model planner before the rules plan, in seconds.
            quotas: where job budgets are settled when jobs end (``None``: not settled).
            stream: how streamed answers are batched into ``token`` events.
            router: who picks the tier (default: the learned router at its recommended
                operating point).
            llm_router_timeout_s: set to let the small tier classify prompts itself (the LLM
                router, when the small tier is a real model), in seconds.
            semantic: the semantic response level (``None``: off).
            semantic_ttl_s: TTL of semantic entries, in seconds.
            component_cache_ttl_s: TTL of cached selection and compression outputs, in seconds.
            coalescer: runs concurrent identical tool calls and generations once across
                workers (``None``: every call runs).
        """
        return cls(
            stages=StageActivities(
                catalog=catalog,
                providers=providers,
                tools=tools,
                cache=cache,
                store=store,
                response_cache_ttl_s=response_cache_ttl_s,
                planner_timeout_s=planner_timeout_s,
                quotas=quotas,
                router=router,
                llm_router_timeout_s=llm_router_timeout_s,
                semantic=semantic,
                semantic_ttl_s=semantic_ttl_s,
                component_cache_ttl_s=component_cache_ttl_s,
            ),
            model=ModelActivities(
                catalog=catalog,
                providers=providers,
                stream=stream,
                cache=cache,
                coalescer=coalescer,
            ),
            tools=ToolActivities(tools=tools, cache=cache, coalescer=coalescer),
        )

    def all(self) -> list[Callable[..., Any]]:
        """The bound activity methods, for ``Worker(activities=...)``."""
        s = self.stages
        return [
            s.prepare_job,
            s.check_response_cache,
            s.plan_tools,
            s.select_model,
            s.compress_context,
            s.record_job,
            self.model.generate_answer,
            self.tools.run_tools,
            self.tools.run_tool,
        ]


__all__ = [
    "AgentActivities",
    "ModelActivities",
    "StageActivities",
    "TokenStreamSettings",
    "ToolActivities",
]
