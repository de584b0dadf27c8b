"""Accounting for one model call: tokens, cost in USD from the catalog, latency in ms."""

from __future__ import annotations

import time

from core.catalog import ModelSpec
from core.models import ModelUsage
from infra.providers.base import Completion


def usage_of(
    purpose: str, spec: ModelSpec, provider: str, completion: Completion, started: float
) -> ModelUsage:
    """The :class:`ModelUsage` of one call.

    Args:
        purpose: ``draft``, ``final`` or ``plan``.
        spec: the catalog entry that answered (its price sets ``cost_usd``).
        provider: the provider's name.
        completion: what the call produced (token counts, model, simulated flag).
        started: the call's ``time.perf_counter()`` start; latency is measured up to now.
    """
    return ModelUsage(
        purpose=purpose,
        tier=spec.tier,
        provider=provider,
        model=completion.model or spec.model_id,
        simulated=completion.simulated,
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        cost_usd=spec.cost_usd(completion.prompt_tokens, completion.completion_tokens),
        latency_ms=round((time.perf_counter() - started) * 1000, 3),
    )
