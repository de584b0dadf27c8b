"""Accounting: one model call's usage and a job's budget reservation."""

from __future__ import annotations

from pydantic import BaseModel

from core.models.enums import Tier


class ModelUsage(BaseModel):
    """One model call's accounting.

    Attributes:
        purpose: ``draft``, ``final`` or ``plan``.
        prompt_tokens / completion_tokens: counted by the provider (or by our tokenizer for the
            simulated provider).
        cost_usd: ``(prompt + completion) / 1000 * cost_per_1k_tokens_usd`` from the catalog.
        latency_ms: wall time of the call in milliseconds.
    """

    purpose: str
    tier: Tier
    provider: str
    model: str
    simulated: bool
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_ms: float
    coalesced: bool = False
    """An identical call in flight (in any worker) answered: no model was called, tokens and
    cost are 0 and ``latency_ms`` is the wait."""


class BudgetReservation(BaseModel):
    """Part of a key's daily budget set aside for one job (:mod:`infra.quotas`).

    Attributes:
        key_id: the API key whose budget it is.
        day: the UTC day it counts against, ``YYYY-MM-DD``.
        estimate_usd: what was reserved, in USD (an upper bound of the job's cost).
        job_id: the job it was made for.
    """

    key_id: str
    day: str
    estimate_usd: float
    job_id: str
    reservation_id: str = ""
    """Random id of this reservation: settling is once per reservation, so a repeated
    submission's reservation, given back, never settles the job's own."""
