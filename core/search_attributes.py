r"""Custom search attributes of agent jobs, so Temporal's visibility can find and filter them.

``temporal workflow list --query 'AgentStatus="AWAITING_APPROVAL"'`` and the Web UI's filter
box use them. They must be registered in the namespace before a workflow may set them:
``agentflow dev`` starts its dev server with them; on a real cluster run, once per namespace::

    temporal operator search-attribute create --namespace <ns> \
        --name AgentStatus --type Keyword --name AgentTier --type Keyword \
        --name AgentCostUsd --type Double --name AgentAwaitingApproval --type Bool \
        --name AgentOwner --type Keyword

A workflow that sets an unregistered attribute fails its workflow task, so the API only asks
jobs to set them (``AgentWorkflowInput.search_attributes``) when it found them registered.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from temporalio.common import (
    SearchAttributeIndexedValueType,
    SearchAttributeKey,
    SearchAttributePair,
    SearchAttributeUpdate,
    TypedSearchAttributes,
)

from core.models import JobStatus, Tier

AGENT_STATUS = SearchAttributeKey.for_keyword("AgentStatus")
"""The job's status (:class:`core.models.JobStatus` value)."""
AGENT_TIER = SearchAttributeKey.for_keyword("AgentTier")
"""The tier that answers (set once the model is selected)."""
AGENT_COST_USD = SearchAttributeKey.for_float("AgentCostUsd")
"""What the job's model calls cost so far, in USD."""
AGENT_AWAITING_APPROVAL = SearchAttributeKey.for_bool("AgentAwaitingApproval")
"""True while the job waits for a reviewer."""
AGENT_OWNER = SearchAttributeKey.for_keyword("AgentOwner")
"""Key id of the API key that submitted the job (visibility listings are filtered by it)."""

ALL_KEYS = (AGENT_STATUS, AGENT_TIER, AGENT_COST_USD, AGENT_AWAITING_APPROVAL, AGENT_OWNER)
"""Every attribute, in registration order."""

CLI_TYPES = {
    SearchAttributeIndexedValueType.KEYWORD: "Keyword",
    SearchAttributeIndexedValueType.DOUBLE: "Double",
    SearchAttributeIndexedValueType.BOOL: "Bool",
}
"""The ``temporal`` CLI's name of each indexed value type (``--search-attribute Name=Type``)."""


def cli_registrations() -> list[str]:
    """``Name=Type`` per attribute, as ``temporal server start-dev --search-attribute`` takes."""
    return [f"{key.name}={CLI_TYPES[key.indexed_value_type]}" for key in ALL_KEYS]


def missing(registered: Mapping[str, int]) -> list[SearchAttributeKey[Any]]:
    """The attributes a namespace lacks, or has registered with another type.

    Args:
        registered: the namespace's custom search attributes, name -> indexed value type (the
            ``custom_attributes`` of an operator service ``ListSearchAttributesResponse``; the
            proto enum's numbers equal :class:`SearchAttributeIndexedValueType`'s).

    Returns:
        The keys to register (or to fix), in registration order; empty when all are there.
    """
    return [key for key in ALL_KEYS if registered.get(key.name) != int(key.indexed_value_type)]


def describe(keys: Iterable[SearchAttributeKey[Any]]) -> str:
    """``AgentStatus (Keyword), AgentCostUsd (Double)``: names and types, for messages."""
    return ", ".join(f"{key.name} ({CLI_TYPES[key.indexed_value_type]})" for key in keys)


def create_command(namespace: str, keys: Iterable[SearchAttributeKey[Any]] = ALL_KEYS) -> str:
    """The ``temporal operator search-attribute create`` command that registers ``keys``.

    Args:
        namespace: the Temporal namespace the jobs run in.
        keys: the attributes to register (default: all of them).
    """
    names = " ".join(
        f"--name {key.name} --type {CLI_TYPES[key.indexed_value_type]}" for key in keys
    )
    return f"temporal operator search-attribute create --namespace {namespace} {names}"


def job_status(attributes: TypedSearchAttributes) -> JobStatus | None:
    """The job status a workflow's ``AgentStatus`` holds; ``None`` when unset or unknown."""
    value = attributes.get(AGENT_STATUS)
    try:
        return JobStatus(value) if value is not None else None
    except ValueError:
        return None


def at_start(owner: str | None) -> TypedSearchAttributes:
    """The attributes a job starts with: RUNNING, not waiting, no cost yet, its owner."""
    pairs: list[SearchAttributePair[Any]] = [
        SearchAttributePair(AGENT_STATUS, JobStatus.RUNNING.value),
        SearchAttributePair(AGENT_AWAITING_APPROVAL, False),
        SearchAttributePair(AGENT_COST_USD, 0.0),
    ]
    if owner:
        pairs.append(SearchAttributePair(AGENT_OWNER, owner))
    return TypedSearchAttributes(pairs)


def updates(
    status: JobStatus, *, tier: Tier | None = None, cost_usd: float | None = None
) -> list[SearchAttributeUpdate[Any]]:
    """The upserts that describe a job now (called by the workflow as it moves)."""
    out: list[SearchAttributeUpdate[Any]] = [
        AGENT_STATUS.value_set(status.value),
        AGENT_AWAITING_APPROVAL.value_set(status is JobStatus.AWAITING_APPROVAL),
    ]
    if tier is not None:
        out.append(AGENT_TIER.value_set(tier.value))
    if cost_usd is not None:
        out.append(AGENT_COST_USD.value_set(float(round(cost_usd, 6))))
    return out
