"""Submitting a job: quotas, checks on the request, and starting its workflow.

A job is its workflow, ``agent-<job_id>``: submitting starts it (nothing is written first).
Quotas come first: over the key's requests per minute it is 429 with ``Retry-After``; when the
job's estimated cost does not fit the key's budget left today it is 402 (:mod:`infra.quotas`).
Unknown tools or bad tool parameters are a 422 naming ``tool_calls[i]``; a job input over
``AGENTFLOW_MAX_JOB_INPUT_BYTES`` is a 413. When Temporal cannot start the workflow the answer
is 503, nothing was written and the budget reservation is given back. ``Idempotency-Key``
handling is :mod:`api.idempotency`.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from api import idempotency
from api.errors import (
    JobStateConflictError,
    PayloadTooLargeError,
    PaymentRequiredError,
    TemporalUnavailableError,
    TooManyRequestsError,
    UnprocessableRequestError,
)
from api.job_views import MEMO_OWNER, MEMO_QUERY, MEMO_REQUEST_HASH, MEMO_SUBMISSION, running
from api.ownership import read_own_job
from api.schemas import JobCreate, JobPublic
from api.state import AppState
from core import search_attributes
from core.auth import Principal
from core.errors import BudgetExceededError, RateLimitedError, ToolCallInvalidError
from core.ids import AGENT_WORKFLOW_TYPE, job_id_for, request_hash, workflow_id_for
from core.models import (
    CURRENT_SHAPE,
    AgentRequest,
    AgentResult,
    AgentWorkflowInput,
    ApprovalPolicy,
    BudgetReservation,
)
from core.settings import Settings
from infra.quotas import estimate_cost_usd

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submitted:
    """What a submission answers.

    Attributes:
        job: the job as the calling key sees it.
        replayed: an earlier submission with the same ``Idempotency-Key`` and body started it
            (this one started nothing).
    """

    job: JobPublic
    replayed: bool = False


def approval_policy(settings: Settings) -> ApprovalPolicy:
    """The approval policy jobs start with, from ``AGENTFLOW_APPROVAL_*``."""
    reminder = settings.approval_reminder_s
    return ApprovalPolicy(
        tools=list(settings.approval_tools),
        cost_threshold_usd=settings.approval_cost_threshold_usd,
        timeout_action=settings.approval_timeout_action,
        reminder_interval=timedelta(seconds=reminder) if reminder else None,
    )


def validate_tools(state: AppState, request: AgentRequest) -> None:
    """Check every tool call against the registry, and that call ids are unique.

    Raises:
        ToolCallInvalidError: an unknown tool, bad parameters (with ``index`` set to the
            call's position) or a duplicate id (422 naming ``tool_calls[i]``).
    """
    for index, call in enumerate(request.tool_calls):
        try:
            state.tools.validate(call)
        except ToolCallInvalidError as exc:
            exc.index = index  # type: ignore[attr-defined]
            raise
    ids = [c.id for c in request.tool_calls]
    if len(ids) != len(set(ids)):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ToolCallInvalidError(dup, "id", f"duplicate tool call id {dup!r}")


def check_encoded(state: AppState, request: AgentRequest) -> None:
    """Refuse a request the worker could not decode, or one over the job input limit.

    The worker reads the request from JSON with pydantic's parser; a request that passed here
    but not there would fail its first workflow task forever. Nesting depth is bounded by the
    contract itself (:data:`core.models.MAX_JSON_DEPTH`); encoding and decoding the request once
    here, as the worker will, catches anything else (text that is not valid Unicode) as a 422,
    and measures its size for the 413.

    Raises:
        UnprocessableRequestError: it cannot be encoded or decoded as JSON (422).
        PayloadTooLargeError: it is over ``AGENTFLOW_MAX_JOB_INPUT_BYTES`` (413).
    """
    try:
        encoded = request.model_dump_json().encode()
        AgentRequest.model_validate_json(encoded)
    except (PydanticSerializationError, ValidationError):
        raise UnprocessableRequestError(
            "the request cannot be carried as JSON (text that is not valid Unicode, or nesting "
            "the worker's JSON parser refuses)"
        ) from None
    limit = state.settings.max_job_input_bytes
    if len(encoded) > limit:
        raise PayloadTooLargeError(
            f"the job's input is {len(encoded)} bytes; the limit is {limit} bytes "
            "(AGENTFLOW_MAX_JOB_INPUT_BYTES)"
        )


async def hit_rate_limit(state: AppState, principal: Principal) -> None:
    """Count one submission against the key's requests per minute.

    Raises:
        TooManyRequestsError: over the limit (429 with ``Retry-After``).
    """
    try:
        await state.quotas.hit_rate_limit(principal)
    except RateLimitedError as exc:
        raise TooManyRequestsError(
            str(exc), headers={"Retry-After": str(exc.retry_after_s)}
        ) from None


async def reserve_budget(
    state: AppState, principal: Principal, job_id: str, request: AgentRequest
) -> BudgetReservation | None:
    """Reserve the job's estimated cost from the key's daily budget.

    Raises:
        PaymentRequiredError: it does not fit (402).
    """
    estimate = estimate_cost_usd(request, state.catalog)
    try:
        return await state.quotas.reserve(principal, job_id, estimate)
    except BudgetExceededError as exc:
        raise PaymentRequiredError(str(exc)) from None


async def release(state: AppState, budget: BudgetReservation | None) -> None:
    """Give back a reservation whose job was not started by this submission."""
    if budget is None:
        return
    try:
        await state.quotas.release(budget)
    except Exception:  # the estimate stays charged (an over-count); never hide the real error
        log.warning("could not release the budget reserved for job %s", budget.job_id)


async def submit_job(
    state: AppState,
    temporal: Client,
    principal: Principal,
    body: JobCreate,
    idempotency_key: str | None,
) -> Submitted:
    """Start the job's workflow for ``body``, owned by the calling key (see the module docstring).

    Raises:
        TooManyRequestsError: over the key's rate (429).
        ToolCallInvalidError: a bad tool call (422).
        UnprocessableRequestError: the request cannot be carried as JSON (422).
        PayloadTooLargeError: the job input is too large (413).
        PaymentRequiredError: the estimate does not fit the key's budget (402).
        JobStateConflictError: the ``Idempotency-Key`` was used with another request (409).
        TemporalUnavailableError: Temporal could not start or describe the workflow (503).
    """
    await hit_rate_limit(state, principal)
    request = body.to_request()
    validate_tools(state, request)
    check_encoded(state, request)
    digest = request_hash(request)
    owner = principal.key_id
    stored_key = idempotency.stored_key(idempotency_key, owner)
    if stored_key:
        earlier = await idempotency.recorded_job(state, stored_key, digest)
        if earlier is not None:
            return Submitted(await read_own_job(state, principal, earlier), replayed=True)
    job_id = job_id_for(idempotency_key, idempotency.key_scope(owner))
    indexed = await state.temporal.search_attributes_enabled()  # before the reservation
    budget = await reserve_budget(state, principal, job_id, request)
    submission = uuid.uuid4().hex
    settings = state.settings
    try:
        handle = await temporal.start_workflow(
            AGENT_WORKFLOW_TYPE,
            AgentWorkflowInput(
                job_id=job_id,
                request=request,
                approval_timeout=timedelta(seconds=settings.approval_timeout_s),
                heartbeat_timeout=timedelta(seconds=settings.activity_heartbeat_timeout_s),
                idempotency_key=stored_key,
                request_hash=digest,
                owner=owner,
                budget=budget,
                approval_policy=approval_policy(settings),
                stream_tokens=settings.stream_tokens,
                search_attributes=indexed,
                shape=CURRENT_SHAPE,
            ),
            id=workflow_id_for(job_id),
            task_queue=settings.task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            memo={
                MEMO_REQUEST_HASH: digest,
                MEMO_SUBMISSION: submission,
                MEMO_QUERY: body.query[:200],
                MEMO_OWNER: owner,
            },
            static_summary=body.query[:200],
            search_attributes=search_attributes.at_start(owner) if indexed else None,
            result_type=AgentResult,
        )
    except WorkflowAlreadyStartedError:
        # The key's workflow already closed; REJECT_DUPLICATE keeps it from running twice.
        handle = temporal.get_workflow_handle(workflow_id_for(job_id), result_type=AgentResult)
    except RPCError as exc:
        await release(state, budget)
        raise TemporalUnavailableError("could not start the job's workflow; try again") from exc
    try:
        replayed = bool(idempotency_key) and await idempotency.started_earlier(
            handle, job_id, digest, submission
        )
    except JobStateConflictError:
        await release(state, budget)  # the key belongs to another request: nothing started
        raise
    if replayed:
        await release(state, budget)  # this submission started nothing
        return Submitted(await read_own_job(state, principal, job_id), replayed=True)
    log.info("job %s started as %s for key %s", job_id, handle.id, owner)
    return Submitted(running(state, job_id, request.query, datetime.now(UTC), owner))
