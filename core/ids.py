"""Job identity: job ids, workflow ids and request fingerprints, shared by API, CLI and workflow.

A job *is* its workflow: ``agent-<job_id>``. With an ``Idempotency-Key`` the job id is derived
from the key, so a repeated submission maps onto the same workflow id and Temporal's id-conflict
policy returns the existing run instead of starting a second one.
"""

from __future__ import annotations

import hashlib
import uuid

from core.canonical import canonical_digest
from core.models import AgentRequest

WORKFLOW_ID_PREFIX = "agent-"
"""Every job's workflow id starts with this."""

AGENT_WORKFLOW_TYPE = "AgentWorkflow"
"""The workflow type of every job (``workflows.agent.AgentWorkflow``): the API starts and reads
jobs by these names, so it never imports workflow (or activity) code."""

BATCH_WORKFLOW_TYPE = "BatchWorkflow"
"""The workflow type of every batch (``workflows.batch.BatchWorkflow``), id ``batch-<id>``."""

PROGRESS_QUERY = "get_progress"
"""The job's progress query (returns ``core.models.AgentProgress``)."""

DECIDE_UPDATE = "decide"
"""The job's approval update (takes ``ApprovalDecision``, returns ``DecisionResult``)."""


def workflow_id_for(job_id: str) -> str:
    """The workflow id of a job: ``agent-<job_id>``."""
    return f"{WORKFLOW_ID_PREFIX}{job_id}"


def batch_workflow_id(batch_id: str) -> str:
    """The workflow id of a batch: ``batch-<batch_id>``."""
    return f"batch-{batch_id}"


def scoped_idempotency_key(idempotency_key: str, owner: str | None) -> str:
    """The idempotency key as stored: ``<owner>/<key>``, so two API keys never share a job.

    ``owner`` ``None`` (authentication off, as before API keys existed) keeps the client's key as
    it is.
    """
    return idempotency_key if owner is None else f"{owner}/{idempotency_key}"


def job_id_for(idempotency_key: str | None, owner: str | None = None) -> str:
    """The job id for a submission.

    Args:
        idempotency_key: the client's ``Idempotency-Key``, or ``None``.
        owner: key id of the submitting API key; the same ``Idempotency-Key`` sent by two keys
            names two jobs.

    Returns:
        ``k`` plus the first 31 hex digits of the SHA-256 of the scoped key
        (:func:`scoped_idempotency_key`) when a key is given (the same key always names the same
        job), else a random UUID's 32 hex digits.
    """
    if idempotency_key is None:
        return uuid.uuid4().hex
    scoped = scoped_idempotency_key(idempotency_key, owner)
    return "k" + hashlib.sha256(scoped.encode()).hexdigest()[:31]


def request_hash(request: AgentRequest) -> str:
    """SHA-256 hex digest of the request's canonical JSON (keys sorted, no whitespace).

    Two requests that compare equal hash the same, so a retried submit with the same idempotency
    key can be told apart from a different request reusing the key.
    """
    return canonical_digest(request.model_dump(mode="json"))
