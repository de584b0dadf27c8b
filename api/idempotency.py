"""``Idempotency-Key`` on ``POST /v1/jobs``: which job a key names, and whether a repeat is one.

With a key, the job id derives from the key and the calling API key (two API keys never share a
job), and Temporal's id-conflict policy (``USE_EXISTING``) returns a job already started under
it. A repeat with the same body answers that job; with another body it is a 409. The job
record of a key answers too, after Temporal's retention removed the workflow, and for jobs
submitted before job ids were derived from keys.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from temporalio.client import WorkflowHandle
from temporalio.service import RPCError

from api.errors import JobStateConflictError, TemporalUnavailableError
from api.job_views import MEMO_REQUEST_HASH, MEMO_SUBMISSION
from api.state import AppState
from core.auth import ANONYMOUS_KEY_ID
from core.errors import StoreUnavailableError
from core.ids import scoped_idempotency_key

log = logging.getLogger(__name__)


def key_scope(owner: str) -> str | None:
    """The scope of an owner's keys: the API key's id; ``None`` with authentication off.

    With authentication off, keys stay as the client sent them, as before keys existed, so a
    repeat of an earlier keyed submission finds its job.
    """
    return None if owner == ANONYMOUS_KEY_ID else owner


def stored_key(idempotency_key: str | None, owner: str) -> str | None:
    """The key as the job records it (scoped to ``owner``), or ``None`` without a key."""
    return scoped_idempotency_key(idempotency_key, key_scope(owner)) if idempotency_key else None


def same_request(job_id: str, stored_hash: str | None, digest: str) -> None:
    """Refuse a key reused with another request.

    Raises:
        JobStateConflictError: ``digest`` differs from the hash the job recorded (409).
    """
    if stored_hash != digest:
        raise JobStateConflictError(
            f"Idempotency-Key was already used for job {job_id} with a different request"
        )


async def recorded_job(state: AppState, key: str, digest: str) -> str | None:
    """The id of the job the key's record names, after checking it is the same request.

    Returns:
        The job id, or ``None`` when no record has the key (or the database is down: Temporal's
        id-conflict policy still returns a job started under the key).

    Raises:
        JobStateConflictError: the key was used with another request (409).
    """
    try:
        record = await asyncio.to_thread(state.store.find_by_idempotency_key, key)
    except StoreUnavailableError:
        log.warning("job database down: Idempotency-Key checked by Temporal alone")
        return None
    if record is None:
        return None
    same_request(record.job_id, record.request_hash, digest)
    return record.job_id


async def started_earlier(
    handle: WorkflowHandle[Any, Any], job_id: str, digest: str, submission: str
) -> bool:
    """Whether the keyed workflow was started by an earlier submission (then same body or 409).

    Args:
        handle: the job's workflow.
        job_id: the job.
        digest: this request's hash.
        submission: this submission's id, as put in the workflow's memo when it started it.

    Raises:
        TemporalUnavailableError: the workflow could not be described (503).
        JobStateConflictError: an earlier submission used the key with another request (409).
    """
    try:
        memo = await (await handle.describe()).memo()
    except RPCError as exc:
        raise TemporalUnavailableError("could not read the job's workflow; try again") from exc
    if memo.get(MEMO_SUBMISSION) == submission:
        return False
    stored = memo.get(MEMO_REQUEST_HASH)
    same_request(job_id, stored if isinstance(stored, str) else None, digest)
    return True
