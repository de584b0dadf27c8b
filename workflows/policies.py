"""Timeout and retry presets for each activity of :class:`workflows.agent.AgentWorkflow`.

One place to read how hard each stage tries. Retry policies own every retry: provider SDK retries
are off, so each attempt is visible in the workflow history. Changing a preset changes only
future scheduling decisions (it is not a non-deterministic change).

Short stages (cache lookup, planning, selection, compression, the record) and batches of quick
in-memory tools run as local activities inside the workflow task: their budgets are short,
because a local activity that keeps failing holds the workflow task open. Model calls and other
tools are regular activities with heartbeats.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

from core.errors import ErrorType

# --------------------------------------------------------------------------- local activities

LOCAL_QUICK_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=100),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=1),
    maximum_attempts=3,
)
"""Cheap local stages: three quick attempts."""

PLAN_TIMEOUT = timedelta(seconds=30)
"""Start-to-close of ``prepare_job`` (cache lookup, plan, selection, and from shape 2 the quick
tools it may run). The activity bounds a model planner by its own timeout
(``AGENTFLOW_PLANNER_TIMEOUT_S``, validated to be shorter) and falls back to the rules, and runs
the tools only within what is left of this (``StageActivities._tools_budget_s``)."""

LOCAL_COMPRESSION_TIMEOUT = timedelta(seconds=30)
"""Start-to-close of ``compress_context`` as a local activity (CPU work in the thread pool)."""

LOCAL_COMPRESSION_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    maximum_attempts=2,
    non_retryable_error_types=[
        ErrorType.CONTEXT_BUDGET_EXCEEDED.value,
        ErrorType.BLOB_NOT_FOUND.value,
    ],
)
"""Compression is deterministic: a second attempt only covers a crashed thread."""

LOCAL_RECORD_TIMEOUT = timedelta(seconds=5)
"""Start-to-close of one local ``record_job`` attempt."""

LOCAL_RECORD_BUDGET = timedelta(seconds=8)
"""Schedule-to-close of the local ``record_job``: after this the write moves to a regular
activity, so a database outage never holds the workflow task open."""

LOCAL_RECORD_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=2),
    maximum_attempts=3,
    non_retryable_error_types=[ErrorType.STORE_REJECTED.value],
)
"""Local record: a few quick attempts; a refused write is final."""

# --------------------------------------------------------------------------- regular activities

TOOL_FANOUT_WIDTH = 8
"""Most ``run_tools`` activities one job runs at once; more calls are grouped into them.

Measured (``python -m benchmarks fanout``): each activity start and completion passes through
one worker's Python thread in turn, so 64 one-call activities took 1.55-1.67x ``asyncio.gather``
while 8 activities of 8 calls took about 1.0x. Grouping costs retry granularity only on the
first attempt: a transient failure inside a batch comes back as data and that call alone is
retried as its own activity."""

TOOL_BATCH_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=3,
)
"""A batch fails only when its worker does (heartbeat timeout, crash; a local batch: its attempt
timeout); finished calls are cache hits on the retry. A local batch also stops after two
attempts' time (schedule-to-close)."""

TOOL_RETRY_ALONE = RetryPolicy(
    initial_interval=timedelta(milliseconds=500),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=2,
    non_retryable_error_types=[ErrorType.TOOL_FAILED.value],
)
"""A call that failed transiently inside a batch: two more attempts on its own (three in all)."""

TOOL_TIMEOUT_MARGIN = timedelta(seconds=5)
"""Added to the slowest call's own timeout for a batch's start-to-close."""

MODEL_ATTEMPT_MARGIN = timedelta(seconds=5)
"""Added to a tier's attempt timeout for the activity's start-to-close (the provider call itself
times out at the tier's attempt timeout)."""


def model_schedule_to_close(start_to_close: timedelta, retry: RetryPolicy) -> timedelta:
    """Bound on all attempts of one model call: every attempt plus the largest backoffs."""
    attempts = max(retry.maximum_attempts, 1)
    backoff = retry.maximum_interval or timedelta(seconds=30)
    return start_to_close * attempts + backoff * (attempts - 1)


# ------------------------------------------------------------------ model calls and records

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

RECORD_TIMEOUT = timedelta(seconds=30)
"""Start-to-close timeout of one ``record_job`` attempt."""

RECORD_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    maximum_attempts=0,
    non_retryable_error_types=[ErrorType.STORE_REJECTED.value],
)
"""Recording retries until the database is back (the outcome is never lost); a write the
database refuses is final, since retrying the same statement cannot succeed."""


BATCH_STEP_TIMEOUT = timedelta(seconds=60)
"""Start-to-close of one ``batch_step`` (a few queries and at most ``max_concurrency`` starts)."""

BATCH_STEP_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
)
"""A batch step retries until the database and Temporal answer again: a batch never fails for an
outage, it waits (a regular activity, so the wait holds no workflow task open)."""
