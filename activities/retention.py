"""The retention activity: one batch of deletions in the job database.

Each call is one transaction over the three tables (see :mod:`infra.retention` for what expires
and why the ``DELETE`` repeats the expiry condition); the database work runs in a thread so the
worker's event loop stays free. A call deletes at most one batch and returns, so it needs no
heartbeat: the workflow loops, and a crashed worker costs at most one batch's start-to-close.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from temporalio import activity

from activities.errors import to_application_error
from core.errors import AgentflowError
from core.retention import DeleteExpiredBatchInput, DeleteExpiredBatchResult
from infra.retention import RetentionStore


class RetentionActivities:
    """The retention workflow's activities, wired to the job database."""

    def __init__(self, store: RetentionStore) -> None:
        """Delete through ``store``."""
        self.store = store

    @activity.defn(name="delete_expired_batch")
    async def delete_expired_batch(self, inp: DeleteExpiredBatchInput) -> DeleteExpiredBatchResult:
        """Delete the oldest expired rows, at most ``inp.batch_size`` per table, in one transaction.

        Returns:
            The rows deleted per table; a count below the batch size means that table is done.

        Raises:
            ApplicationError: ``StoreUnavailable`` (retryable) while the database is down or
                locked (nothing was deleted); ``StoreRejected`` (non-retryable) when it refuses
                a statement.
        """
        try:
            rows = await asyncio.to_thread(
                self.store.delete_expired_batch, inp.cutoff, inp.batch_size
            )
        except AgentflowError as exc:
            raise to_application_error(exc) from exc
        activity.logger.info(
            "retention batch: %d jobs, %d payloads, %d blobs deleted",
            rows.jobs,
            rows.payloads,
            rows.blobs,
        )
        return DeleteExpiredBatchResult(
            jobs_deleted=rows.jobs, payloads_deleted=rows.payloads, blobs_deleted=rows.blobs
        )

    def all(self) -> list[Callable[..., Any]]:
        """The bound activity methods, for ``Worker(activities=...)``."""
        return [self.delete_expired_batch]
