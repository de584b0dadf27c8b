"""Loading a period's terminal jobs from the database into an :class:`AnalyticsWindow`.

Bounded: at most :data:`MAX_JOBS` jobs, the ones that ended last (a busier period is
``sampled``). :func:`load_window` blocks on the database; run it off the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy import Engine

from core.models import JobStatus
from infra.analytics.models import Period, WindowInfo
from infra.analytics.samples import COLUMNS, JobSample
from infra.db import translate_errors, utc_now
from infra.jobs import JobRecord

MAX_JOBS: Final = 50_000
"""Most jobs one query reads: the ones that ended last. A busier period is ``sampled``."""


TERMINAL_STATUSES: Final = tuple(s.value for s in JobStatus if s.is_terminal)


@dataclass(frozen=True, slots=True)
class AnalyticsWindow:
    """The jobs of one period, as :func:`load_window` read them.

    Attributes:
        period: the period asked for.
        start / end: the window ``[start, end]`` (aware UTC).
        samples: the terminal jobs that ended in it, newest first (at most ``max_jobs``).
        jobs_in_period: how many such jobs exist (more than ``len(samples)`` when sampled).
        max_jobs: the bound the loader applied.
    """

    period: Period
    start: datetime
    end: datetime
    samples: list[JobSample] = field(default_factory=list)
    jobs_in_period: int = 0
    max_jobs: int = MAX_JOBS

    @property
    def sampled(self) -> bool:
        """Whether more jobs ended in the period than were read."""
        return self.jobs_in_period > len(self.samples)

    @property
    def covered_start(self) -> datetime:
        """Where the figures begin: ``start``, or the oldest read job's end when sampled."""
        if self.sampled and self.samples:
            ends = [s.completed_at for s in self.samples if s.completed_at is not None]
            return min(ends) if ends else self.start
        return self.start

    @property
    def covered_days(self) -> float:
        """Days the figures cover (the period's length unless sampled)."""
        return max((self.end - self.covered_start) / timedelta(days=1), 1e-9)

    def info(self) -> WindowInfo:
        """The window as responses describe it."""
        return WindowInfo(
            period=self.period,
            start=self.start,
            end=self.end,
            covered_start=self.covered_start,
            jobs=len(self.samples),
            jobs_in_period=self.jobs_in_period,
            sampled=self.sampled,
            max_jobs=self.max_jobs,
        )


def _end_and_id(row: sa.Row[Any]) -> tuple[datetime, str]:
    return (row.completed_at, row.job_id)


def load_window(
    engine: Engine,
    period: Period,
    *,
    owner: str | None = None,
    now: datetime | None = None,
    max_jobs: int = MAX_JOBS,
) -> AnalyticsWindow:
    """Read the terminal jobs that ended in ``[now - period, now]`` (blocking: use a thread).

    Reads only the columns analytics needs (never the request JSON), newest first, at most
    ``max_jobs`` rows; when more ended in the period they are counted and the window is
    marked ``sampled``.

    Args:
        engine: the job database.
        period: which window.
        owner: only jobs submitted by this key id; ``None`` for every job.
        now: the window's end (aware); default the wall clock.
        max_jobs: most rows read (>= 1).

    Returns:
        The window with its samples.

    Raises:
        StoreUnavailableError: the database is down or locked (retryable).
        StoreRejectedError: the database refused the query (non-retryable).
    """
    end = now or utc_now()
    start = end - period.length
    table = JobRecord.__table__  # type: ignore[attr-defined]
    conditions = [
        table.c.status.in_(TERMINAL_STATUSES),
        table.c.completed_at >= start,
        table.c.completed_at <= end,
    ]
    if owner is not None:
        conditions.append(table.c.owner == owner)
    # Choose the newest rows on the narrow columns first: sorting whole rows would sort every
    # result JSON of the period too (SQLite spills that to disk).
    newest = (
        sa.select(table.c.job_id)
        .where(*conditions)
        .order_by(table.c.completed_at.desc(), table.c.job_id.desc())
        .limit(max_jobs + 1)
    )
    statement = sa.select(*(table.c[name] for name in COLUMNS)).where(
        table.c.job_id.in_(newest.scalar_subquery())
    )
    with translate_errors(), engine.connect() as conn:
        rows = sorted(conn.execute(statement).all(), key=_end_and_id, reverse=True)
        total = len(rows)
        if total > max_jobs:
            count = sa.select(sa.func.count()).select_from(table).where(*conditions)
            total = int(conn.execute(count).scalar_one())
            del rows[max_jobs:]
    samples = [JobSample.from_columns(*row) for row in rows]
    return AnalyticsWindow(period, start, end, samples, total, max_jobs)
