"""The model-call activity: a draft or a final answer from one tier.

A regular activity: it can take minutes on the large tier, so it heartbeats while the provider
works (a lost worker is noticed within the heartbeat timeout, and a cancelled job's call is
abandoned), and its start-to-close comes from the tier's attempt timeout in the catalog.
"""

from __future__ import annotations

import time

from temporalio import activity

from activities.errors import to_application_error
from activities.heartbeat import heartbeating
from activities.token_stream import TokenPublisher, TokenStreamSettings
from core.catalog import ModelCatalog
from core.errors import ModelError
from core.models import GenerateInput, GenerateResult
from infra.providers import ProviderRegistry, build_messages
from infra.usage import usage_of


class ModelActivities:
    """Generation for one worker process.

    Args:
        catalog: tier -> model spec (costs in USD per 1k tokens, speeds, attempt timeouts).
        providers: the providers that serve the catalog's specs.
        stream: how streamed answers are batched into ``token`` events.
    """

    def __init__(
        self,
        *,
        catalog: ModelCatalog,
        providers: ProviderRegistry,
        stream: TokenStreamSettings | None = None,
    ) -> None:
        self.catalog = catalog
        self.providers = providers
        self.stream = stream or TokenStreamSettings()

    @activity.defn(name="generate_answer")
    async def generate_answer(self, inp: GenerateInput) -> GenerateResult:
        """Ask the tier's model for a draft or a final answer.

        With ``inp.stream`` (a final answer of a job that streams) the text is published as
        ``token`` events on the job's event stream while the provider produces it, under
        revision ``inp.revision_base + attempt`` (:mod:`activities.token_stream`).

        Returns:
            The text and its usage: prompt and completion tokens, cost in USD from the catalog,
            latency in ms; ``revision`` of its token events (0 when not streamed).

        Raises:
            ApplicationError: typed ``ModelRateLimited`` (retryable, with the endpoint's
                Retry-After as the next retry delay), ``ModelUnavailable`` (retryable, including
                a call that outran the tier's attempt timeout), ``ModelRequestRejected`` or
                ``ModelOutputInvalid`` (non-retryable).
        """
        spec = self.catalog.for_tier(inp.tier)
        provider = self.providers.for_spec(spec)
        max_tokens = min(inp.max_tokens or spec.max_tokens, spec.max_tokens)
        messages = build_messages(inp.query, inp.context, inp.purpose)
        started = time.perf_counter()
        streaming = inp.stream and activity.in_activity() and not activity.info().is_local
        revision = inp.revision_base + activity.info().attempt if streaming else 0
        try:
            async with heartbeating(f"{inp.purpose} on {spec.model_id}"):
                if streaming:
                    async with TokenPublisher(inp.job_id, revision, spec.tier, self.stream) as pub:
                        completion = await provider.complete(
                            spec, messages, max_tokens, on_delta=pub.on_delta
                        )
                else:
                    completion = await provider.complete(spec, messages, max_tokens)
        except ModelError as exc:
            raise to_application_error(exc) from exc
        usage = usage_of(inp.purpose, spec, provider.name, completion, started)
        return GenerateResult(text=completion.text, usage=usage, revision=revision)
