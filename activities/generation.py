"""The model-call activity: a draft or a final answer from one tier.

A regular activity: it can take minutes on the large tier, so it heartbeats while the provider
works (a lost worker is noticed within the heartbeat timeout, and a cancelled job's call is
abandoned), and its start-to-close comes from the tier's attempt timeout in the catalog.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.compression import ContextCompressor
from activities.errors import to_application_error
from activities.heartbeat import heartbeating
from activities.token_stream import TokenPublisher, TokenStreamSettings
from core.canonical import canonical_digest
from core.catalog import ModelCatalog, ModelSpec
from core.errors import ErrorType, ModelError
from core.metrics import observe_coalesced
from core.models import CacheLevel, GenerateInput, GenerateResult
from core.providers import ChatMessage, usage_of
from infra.cache import RedisCache
from infra.coalesce import Coalescer
from infra.providers import ProviderRegistry, build_messages

SHARED_GENERATION_TTL_S = 30
"""How long a generation stays on the component level for identical calls to share, in seconds:
long enough for every waiter of a coalesced call to read it, short enough not to act as a
response cache (that is the response level's job, with its own rules)."""


class ModelActivities:
    """Generation for one worker process.

    Args:
        catalog: tier -> model spec (costs in USD per 1k tokens, speeds, attempt timeouts).
        providers: the providers that serve the catalog's specs.
        stream: how streamed answers are batched into ``token`` events.
        cache: where a generation is shared with identical calls in flight (the component
            level, for :data:`SHARED_GENERATION_TTL_S`).
        coalescer: when given with ``cache``, concurrent identical generations (same model,
            messages and token limit, in any worker) call the model once.
        compressor: runs the compression stage for inputs that ask for it
            (``GenerateInput.compress``); without one such inputs are refused.
    """

    def __init__(
        self,
        *,
        catalog: ModelCatalog,
        providers: ProviderRegistry,
        stream: TokenStreamSettings | None = None,
        cache: RedisCache | None = None,
        coalescer: Coalescer | None = None,
        compressor: ContextCompressor | None = None,
    ) -> None:
        self.catalog = catalog
        self.providers = providers
        self.stream = stream or TokenStreamSettings()
        self.cache = cache
        self.coalescer = coalescer
        self.compressor = compressor

    @activity.defn(name="generate_answer")
    async def generate_answer(self, inp: GenerateInput) -> GenerateResult:
        """Ask the tier's model for a draft or a final answer.

        With ``inp.stream`` (a final answer of a job that streams) the text is published as
        ``token`` events on the job's token side channel (Redis, :mod:`infra.token_channel`) while
        the provider produces it, under
        revision ``inp.revision_base + attempt`` (:mod:`activities.token_stream`).

        With ``inp.compress`` the context is first fitted to the token budget
        (:meth:`activities.compression.ContextCompressor.compress`), and the answer is over that.

        Returns:
            The text and its usage: prompt and completion tokens, cost in USD from the catalog,
            latency in ms; ``revision`` of its token events (0 when not streamed); with
            ``inp.compress``, the compression summary, its wall time in ms and whether the
            component level answered it.

        Raises:
            ApplicationError: typed ``ModelRateLimited`` (retryable, with the endpoint's
                Retry-After as the next retry delay), ``ModelUnavailable`` (retryable, including
                a call that outran the tier's attempt timeout), ``ModelRequestRejected`` or
                ``ModelOutputInvalid`` (non-retryable); from compression ``ContextBudgetExceeded``
                (non-retryable) and the others its docstring names.
        """
        if inp.compress is None:
            return await self._generate(inp)
        if self.compressor is None:
            raise ApplicationError(
                "this worker cannot compress inside generation",
                type=ErrorType.COMPRESSION_UNAVAILABLE.value,
                non_retryable=True,
            )
        started = time.perf_counter()
        async with heartbeating("compression"):
            compressed = await self.compressor.compress(inp.compress)
        compression_ms = round((time.perf_counter() - started) * 1000, 3)
        result = await self._generate(inp.model_copy(update={"context": compressed.items}))
        return result.model_copy(
            update={
                "compression": compressed.summary,
                "compression_ms": compression_ms,
                "compression_cache_hit": compressed.cache_hit,
            }
        )

    async def _generate(self, inp: GenerateInput) -> GenerateResult:
        """The model call of :meth:`generate_answer` over ``inp.context`` as it is."""
        spec = self.catalog.for_tier(inp.tier)
        provider = self.providers.for_spec(spec)
        max_tokens = min(inp.max_tokens or spec.max_tokens, spec.max_tokens)
        messages = build_messages(inp.query, inp.context, inp.purpose)
        streaming = inp.stream and activity.in_activity() and not activity.info().is_local
        revision = inp.revision_base + activity.info().attempt if streaming else 0

        async def call_model() -> GenerateResult:
            started = time.perf_counter()
            try:
                async with heartbeating(f"{inp.purpose} on {spec.model_id}"):
                    if streaming:
                        async with TokenPublisher(
                            inp.job_id, revision, spec.tier, self.stream, self.cache
                        ) as pub:
                            completion = await provider.complete(
                                spec, messages, max_tokens, on_delta=pub.on_delta
                            )
                    else:
                        completion = await provider.complete(spec, messages, max_tokens)
            except ModelError as exc:
                raise to_application_error(exc) from exc
            usage = usage_of(inp.purpose, spec, provider.name, completion, started)
            return GenerateResult(text=completion.text, usage=usage, revision=revision)

        if self.cache is None or self.coalescer is None:
            return await call_model()
        return await self._coalesced(inp, spec, messages, max_tokens, call_model, streaming)

    async def _coalesced(
        self,
        inp: GenerateInput,
        spec: ModelSpec,
        messages: list[ChatMessage],
        max_tokens: int,
        call_model: Callable[[], Awaitable[GenerateResult]],
        streaming: bool,
    ) -> GenerateResult:
        """Run ``call_model`` once across identical generations in flight; share the text.

        Identical means the same key (owner), model, messages and token limit: one key never
        receives, nor learns of, another key's generation.

        The holder stores its result on the component level for
        :data:`SHARED_GENERATION_TTL_S`; a waiter reports it with ``coalesced`` usage (no
        tokens, no cost; the wait as latency) and, when it streams, publishes the text as one
        ``token`` event.
        """
        assert self.cache is not None and self.coalescer is not None
        cache = self.cache
        digest = canonical_digest(
            [inp.owner, spec.provider, spec.model_id, spec.base_url, spec.temperature, max_tokens]
            + [[m.role, m.content] for m in messages]
        )
        key = f"{CacheLevel.COMPONENT.prefix}generation:{digest}"

        async def compute() -> GenerateResult:
            result = await call_model()
            await cache.set_level(
                CacheLevel.COMPONENT, key, result.model_dump(mode="json"), SHARED_GENERATION_TTL_S
            )
            return result

        async def load() -> GenerateResult | None:
            shared = await cache.get_json(key)
            return GenerateResult.model_validate(shared) if isinstance(shared, dict) else None

        # The wait heartbeats too: a waiter may wait as long as the holder's whole model call.
        async with heartbeating(f"{inp.purpose} on {spec.model_id} (shared)"):
            outcome = await self.coalescer.run(key, compute, load)
        if outcome.role != "waiter":
            return outcome.value
        shared = outcome.value
        observe_coalesced(CacheLevel.COMPONENT)
        revision = inp.revision_base + activity.info().attempt if streaming else 0
        if streaming:
            async with TokenPublisher(
                inp.job_id, revision, spec.tier, self.stream, self.cache
            ) as pub:
                pub.on_delta(shared.text)
        usage = shared.usage.model_copy(
            update={
                "purpose": inp.purpose,
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "cost_usd": 0.0,
                "latency_ms": round(outcome.waited_ms, 3),
                "coalesced": True,
            }
        )
        return GenerateResult(text=shared.text, usage=usage, revision=revision)
