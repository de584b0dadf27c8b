"""Timeout and retry presets for each activity of :class:`workflows.agent.AgentWorkflow`.

One place to read how hard each stage tries. Retry policies own every retry: provider SDK retries
are off, so each attempt is visible in the workflow history. Changing a preset changes only
future scheduling decisions (it is not a non-deterministic change).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

from core.errors import ErrorType

QUICK_TIMEOUT = timedelta(seconds=10)
"""Start-to-close timeout for cheap, local stages (cache check, selection, planning)."""

QUICK_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=5),
    maximum_attempts=3,
)
"""Cheap stages: three quick attempts."""

MODEL_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=3,
    non_retryable_error_types=[
        ErrorType.MODEL_REQUEST_REJECTED.value,
        ErrorType.MODEL_OUTPUT_INVALID.value,
    ],
)
"""Model calls: three attempts (429 honours Retry-After via next_retry_delay); 4xx fail at once."""

DRAFT_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500),
    maximum_attempts=2,
    non_retryable_error_types=MODEL_RETRY.non_retryable_error_types,
)
"""The draft is optional: two attempts, then the job goes on without it."""

TOOL_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=3,
    non_retryable_error_types=[ErrorType.TOOL_FAILED.value],
)
"""Tools: transient failures retried three times; a refused input is final (and reported)."""

COMPRESSION_TIMEOUT = timedelta(seconds=60)
"""Compression reads blobs from the database and tokenizes; generous but bounded."""

COMPRESSION_RETRY = RetryPolicy(
    maximum_attempts=3,
    non_retryable_error_types=[
        ErrorType.CONTEXT_BUDGET_EXCEEDED.value,
        ErrorType.BLOB_NOT_FOUND.value,
    ],
)
"""Compression: an over-budget critical set or a missing blob is final."""

RECORD_TIMEOUT = timedelta(seconds=30)
"""Start-to-close timeout of one ``record_job`` attempt."""

RECORD_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    maximum_attempts=0,
)
"""Recording retries until the database is back: the outcome is never lost."""
