"""The model catalog: which provider and model answers for each tier, and what it costs.

Defaults come from seed 000 (``model_configurations``): small 0.0005 USD per 1k tokens at ~150
tokens/s and at most 1024 tokens, medium 0.003 / ~80 / 2048, large 0.01 / ~30 / 4096. Every tier
uses the offline ``simulated`` provider unless a catalog file or ``OPENAI_BASE_URL`` says otherwise.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from core.models import Tier

ProviderKind = Literal["simulated", "openai"]

ATTEMPT_TIME_FACTOR = 1.5
"""Margin on the time a tier needs to produce its ``max_tokens`` (real speeds vary)."""

ATTEMPT_OVERHEAD_S = 10.0
"""Seconds added to every attempt timeout for prompt processing and connection set-up."""

DEFAULT_CONTEXT_WINDOWS: dict[Tier, int] = {
    Tier.SMALL: 8_192,
    Tier.MEDIUM: 32_768,
    Tier.LARGE: 128_000,
}
"""Context window in tokens per tier when the catalog does not say (typical of 7-8B, mid-size
and frontier models)."""


class ModelSpec(BaseModel):
    """One tier's model.

    Attributes:
        tier: the tier this model serves.
        provider: ``simulated`` (offline, labelled) or ``openai`` (any OpenAI-compatible endpoint).
        model_id: the model name sent to the provider.
        cost_per_1k_tokens_usd: price of 1,000 tokens, prompt and completion alike, in USD.
        tokens_per_second: typical generation speed; the simulated provider sleeps accordingly.
        max_tokens: the most completion tokens a call may ask for.
        base_url / api_key: per-model endpoint override for ``openai`` (defaults from settings).
        request_timeout_s: how long one call may take, in seconds; by default
            :attr:`attempt_timeout_s` derives it from ``max_tokens`` and ``tokens_per_second``.
        context_window: the most tokens (prompt plus completion) one call may hold; when a
            catalog entry leaves it out, the tier's default (:data:`DEFAULT_CONTEXT_WINDOWS`).
            Selection escalates a prompt that does not fit the chosen tier.
    """

    tier: Tier
    provider: ProviderKind = "simulated"
    model_id: str
    cost_per_1k_tokens_usd: float = Field(ge=0)
    tokens_per_second: float = Field(gt=0)
    max_tokens: int = Field(gt=0)
    temperature: float = 0.7
    base_url: str | None = None
    api_key: str | None = None
    request_timeout_s: float | None = Field(default=None, gt=0)
    context_window: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _default_window(self) -> ModelSpec:
        if self.context_window == 0:
            self.context_window = DEFAULT_CONTEXT_WINDOWS[self.tier]
        elif self.context_window <= self.max_tokens:
            raise ValueError(
                f"{self.tier} context_window {self.context_window} must exceed max_tokens "
                f"{self.max_tokens}"
            )
        return self

    @property
    def attempt_timeout_s(self) -> float:
        """Seconds one generation call may take.

        The configured ``request_timeout_s``, else the time to produce ``max_tokens`` at
        ``tokens_per_second`` times :data:`ATTEMPT_TIME_FACTOR`, plus :data:`ATTEMPT_OVERHEAD_S`
        for the prompt and the connection (large default tier: 4096 / 30 * 1.5 + 10 = 215 s).
        """
        if self.request_timeout_s is not None:
            return self.request_timeout_s
        generation_s = self.max_tokens / self.tokens_per_second
        return round(generation_s * ATTEMPT_TIME_FACTOR + ATTEMPT_OVERHEAD_S, 1)

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Cost of one call in USD from its token counts."""
        return (prompt_tokens + completion_tokens) / 1000 * self.cost_per_1k_tokens_usd


DRAFT_ESTIMATE_TOKENS = 256
"""Completion tokens a draft is expected to use (the default ``draft_max_tokens``)."""


class ModelCatalog(BaseModel):
    """Exactly one :class:`ModelSpec` per tier, context windows non-decreasing with the tier."""

    models: list[ModelSpec]

    @model_validator(mode="after")
    def _one_per_tier(self) -> ModelCatalog:
        tiers = [m.tier for m in self.models]
        missing = set(Tier) - set(tiers)
        if missing or len(tiers) != len(set(tiers)):
            raise ValueError(f"catalog needs exactly one model per tier; got {sorted(tiers)}")
        windows = [self.for_tier(t).context_window for t in Tier]
        if windows != sorted(windows):
            raise ValueError(
                "catalog context_window must not shrink from small to large; got "
                + ", ".join(f"{t} {w}" for t, w in zip(Tier, windows, strict=True))
            )
        return self

    def for_tier(self, tier: Tier) -> ModelSpec:
        """The model serving ``tier``."""
        return next(m for m in self.models if m.tier == tier)

    def fingerprint(self) -> str:
        """Model identity of the whole catalog: 16 hex characters of a SHA-256.

        The digest covers each tier's provider, model id, endpoint, temperature and max tokens.

        Part of every response-cache key (:func:`infra.cache.response_cache_key`): switching a
        tier from the simulated provider to a real endpoint, or to another model, changes every
        key, so no answer of the old model is served as the new one's. Prices, speeds and API
        keys are left out: they do not change an answer.
        """
        identity = [
            [m.tier.value, m.provider, m.model_id, m.base_url or "", m.temperature, m.max_tokens]
            for m in sorted(self.models, key=lambda spec: list(Tier).index(spec.tier))
        ]
        payload = json.dumps(identity, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def estimate_remaining_cost_usd(
        self,
        tier: Tier,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        draft_tokens: int = DRAFT_ESTIMATE_TOKENS,
    ) -> float:
        """Expected cost of a job's model calls after selection, in USD.

        The final answer on ``tier`` (``prompt_tokens`` in, ``completion_tokens`` out, capped
        at the tier's ``max_tokens``) plus, when ``tier`` is above small, a small-tier draft of
        ``draft_tokens`` on the same prompt. An expectation for the approval policy's cost
        threshold, not the budget's upper bound (:func:`infra.quotas.estimate_cost_usd`).
        """
        spec = self.for_tier(tier)
        cost = spec.cost_usd(prompt_tokens, min(completion_tokens, spec.max_tokens))
        if tier is not Tier.SMALL:
            cost += self.for_tier(Tier.SMALL).cost_usd(prompt_tokens, draft_tokens)
        return round(cost, 6)

    @classmethod
    def default(cls, *, openai_base_url: str | None = None) -> ModelCatalog:
        """The seed's three tiers; all simulated unless ``openai_base_url`` is given."""
        provider: ProviderKind = "openai" if openai_base_url else "simulated"
        prefix = "" if openai_base_url else "simulated-"
        return cls(
            models=[
                ModelSpec(
                    tier=Tier.SMALL,
                    provider=provider,
                    model_id=f"{prefix}small",
                    cost_per_1k_tokens_usd=0.0005,
                    tokens_per_second=150,
                    max_tokens=1024,
                ),
                ModelSpec(
                    tier=Tier.MEDIUM,
                    provider=provider,
                    model_id=f"{prefix}medium",
                    cost_per_1k_tokens_usd=0.003,
                    tokens_per_second=80,
                    max_tokens=2048,
                ),
                ModelSpec(
                    tier=Tier.LARGE,
                    provider=provider,
                    model_id=f"{prefix}large",
                    cost_per_1k_tokens_usd=0.01,
                    tokens_per_second=30,
                    max_tokens=4096,
                ),
            ]
        )

    @classmethod
    def from_file(cls, path: Path) -> ModelCatalog:
        """Load a catalog from a JSON file ``{"models": [ModelSpec, ...]}``.

        Raises:
            ValueError: the file is missing or does not validate (message names the file).
        """
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise ValueError(f"AGENTFLOW_CATALOG_FILE {path}: {exc}") from exc


def load_catalog(catalog_file: Path | None, openai_base_url: str | None) -> ModelCatalog:
    """The catalog the settings describe: the file when given, else the default."""
    if catalog_file is not None:
        return ModelCatalog.from_file(catalog_file)
    return ModelCatalog.default(openai_base_url=openai_base_url)
