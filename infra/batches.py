"""Batch records: a batch of agent requests and its items, the state a batch workflow drives.

A batch's items live here, never in workflow history: the batch workflow (issue 22) asks this
store for the next items it may start (:meth:`BatchStore.claim`), starts each as a job, and
reports each job's outcome back (:meth:`BatchStore.finish`). The store owns the item rules:

- **Order within a sequence key.** Items sharing a ``sequence_key`` run one at a time, in input
  order: an item is claimable only when no earlier item with its key is pending or running.
  Items without a key are independent.
- **Attempts and the dead letter.** Each claim is one attempt (``attempts`` counts them, and the
  attempt's ``job_id`` is ``<batch_id>-<seq>-<attempt>``). A failed attempt puts the item back to
  ``pending`` while attempts are left, else into ``dead_letter`` with its last error: no item is
  ever dropped silently.
- **Exactly one outcome per attempt.** :meth:`BatchStore.finish` applies only to the item's
  current attempt (its ``job_id``) while it is running, so a repeated or late report changes
  nothing.
- **No two claimers take the same item.** A claim reads and marks items under one write lock
  (SQLite ``BEGIN IMMEDIATE``; PostgreSQL ``FOR UPDATE SKIP LOCKED``).

Every method is synchronous and thread-safe and raises, like :mod:`infra.jobs`,
:class:`core.errors.StoreUnavailableError` (retryable) or :class:`core.errors.StoreRejectedError`
(non-retryable, also for a duplicate ``item_key``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import Engine, Index, Table, Text, UniqueConstraint, and_, exists, func, select
from sqlalchemy.orm import aliased
from sqlmodel import Field, SQLModel

from core.models import JobStatus
from infra.db import UTCDateTime, translate_errors, utc_now
from infra.jobs import JobRecord


class ItemStatus(StrEnum):
    """Where one batch item is.

    ``pending`` (waiting, or failed with attempts left), ``running`` (its current attempt's job is
    out), ``completed``, ``dead_letter`` (failed on its last attempt), ``rejected`` (its job
    waited for a human who rejected it, or did not decide in time), ``canceled`` (its job was
    cancelled). Rejected and canceled items are never retried: another attempt would ask the
    same human again, or undo the cancel.
    """

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    DEAD_LETTER = "dead_letter"
    REJECTED = "rejected"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        """Whether the item is done for this run (anything but pending and running)."""
        return self not in (ItemStatus.PENDING, ItemStatus.RUNNING)


class BatchRecord(SQLModel, table=True):
    """One batch: who owns it and how its items run.

    Attributes:
        batch_id: the batch's id (also its workflow's, as ``batch-<batch_id>``).
        owner: key id of the API key that submitted it (``None``: authentication off).
        name / metadata_json: the client's label and free-form metadata (JSON object).
        status: ``running``, ``completed``, ``canceled`` or ``failed``.
        max_concurrency: most items running at once (>= 1).
        max_attempts: attempts per item before the dead letter (>= 1).
        total_items: number of items.
        created_at / updated_at / ended_at: aware UTC.
    """

    __tablename__ = "batches"

    batch_id: str = Field(primary_key=True, max_length=64)
    owner: str | None = Field(default=None, index=True, max_length=32)
    name: str | None = Field(default=None, max_length=200)
    metadata_json: str | None = Field(default=None, sa_type=Text)
    status: str = Field(default="running", max_length=32)
    max_concurrency: int = 8
    max_attempts: int = 3
    total_items: int = 0
    created_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)
    ended_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class BatchItemRecord(SQLModel, table=True):
    """One item of a batch: its request and where it is.

    Attributes:
        batch_id / seq: the batch and the item's 0-based position in the input.
        item_key: the client's id for the item, unique in the batch (``None``: none given).
        sequence_key: items sharing it run one at a time in input order (``None``: free).
        request_json: the item's :class:`core.models.AgentRequest` as JSON.
        status: an :class:`ItemStatus` value.
        attempts: attempts claimed so far.
        job_id: the current (or last) attempt's job id, ``<batch_id>-<seq>-<attempt>``.
        last_error: the last failed attempt's error.
        updated_at: aware UTC.
    """

    __tablename__ = "batch_items"
    __table_args__ = (
        UniqueConstraint("batch_id", "item_key", name="uq_batch_items_item_key"),
        Index("ix_batch_items_status", "batch_id", "status", "seq"),
        Index("ix_batch_items_sequence", "batch_id", "sequence_key", "seq"),
    )

    batch_id: str = Field(primary_key=True, max_length=64)
    seq: int = Field(primary_key=True)
    item_key: str | None = Field(default=None, max_length=200)
    sequence_key: str | None = Field(default=None, max_length=200)
    request_json: str = Field(sa_type=Text)
    status: str = Field(default=ItemStatus.PENDING.value, max_length=32)
    attempts: int = 0
    job_id: str | None = Field(default=None, max_length=128)
    last_error: str | None = Field(default=None, sa_type=Text)
    updated_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)


@dataclass(frozen=True)
class NewItem:
    """An item to add to a batch: its request (JSON) and optional keys."""

    request_json: str
    item_key: str | None = None
    sequence_key: str | None = None


@dataclass(frozen=True)
class ClaimedItem:
    """One attempt the caller now runs: the item and the job id of this attempt."""

    seq: int
    job_id: str
    attempt: int
    request_json: str


def item_job_id(batch_id: str, seq: int, attempt: int) -> str:
    """The job id of attempt ``attempt`` (1-based) of item ``seq``: ``<batch>-<seq>-<attempt>``."""
    return f"{batch_id}-{seq}-{attempt}"


_FINAL_FOR_JOB = {
    JobStatus.REJECTED.value: ItemStatus.REJECTED,
    JobStatus.EXPIRED.value: ItemStatus.REJECTED,
    JobStatus.CANCELED.value: ItemStatus.CANCELED,
}
"""Job endings that end their item without another attempt."""


def _items() -> Table:
    return cast(Table, BatchItemRecord.__table__)  # type: ignore[attr-defined]


def _jobs() -> Table:
    return cast(Table, JobRecord.__table__)  # type: ignore[attr-defined]


class BatchStore:
    """Reads and writes batches and their items (see the module docstring for the rules)."""

    def __init__(self, engine: Engine) -> None:
        """Use ``engine`` (see :func:`infra.db.make_engine`); tables must exist."""
        self._engine = engine

    def create(self, batch: BatchRecord, items: Sequence[NewItem]) -> None:
        """Store ``batch`` and its ``items`` (numbered from 0 in order) in one transaction.

        Raises:
            StoreRejectedError: the batch id exists, or two items share an ``item_key``.
        """
        now = utc_now()
        rows: list[dict[str, Any]] = [
            {
                "batch_id": batch.batch_id,
                "seq": seq,
                "item_key": item.item_key,
                "sequence_key": item.sequence_key,
                "request_json": item.request_json,
                "status": ItemStatus.PENDING.value,
                "attempts": 0,
                "job_id": None,
                "last_error": None,
                "updated_at": now,
            }
            for seq, item in enumerate(items)
        ]
        batch.total_items = len(rows)
        batches = cast(Table, BatchRecord.__table__)  # type: ignore[attr-defined]
        with translate_errors(), self._engine.begin() as conn:
            conn.execute(
                batches.insert(), {c.name: getattr(batch, c.name) for c in batches.columns}
            )
            if rows:
                conn.execute(_items().insert(), rows)

    def claim(self, batch_id: str, limit: int) -> list[ClaimedItem]:
        """Mark up to ``limit`` claimable items running and return their new attempts.

        Claimable: ``pending``, and no earlier item with the same ``sequence_key`` is pending or
        running. Items come in input order; each claim counts one attempt.
        """
        if limit <= 0:
            return []
        items = _items()
        earlier = aliased(items)
        blocked = exists().where(
            and_(
                earlier.c.batch_id == items.c.batch_id,
                earlier.c.sequence_key == items.c.sequence_key,
                earlier.c.seq < items.c.seq,
                earlier.c.status.in_([ItemStatus.PENDING.value, ItemStatus.RUNNING.value]),
            )
        )
        query = (
            select(items.c.seq, items.c.attempts, items.c.request_json)
            .where(items.c.batch_id == batch_id, items.c.status == ItemStatus.PENDING.value)
            .where(items.c.sequence_key.is_(None) | ~blocked)
            .order_by(items.c.seq)
            .limit(limit)
        )
        sqlite = self._engine.dialect.name == "sqlite"
        if not sqlite:
            query = query.with_for_update(skip_locked=True, of=items)
        now = utc_now()
        claimed: list[ClaimedItem] = []
        with translate_errors(), self._engine.connect() as conn:
            if sqlite:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            for seq, attempts, request_json in conn.execute(query).all():
                attempt = attempts + 1
                job_id = item_job_id(batch_id, seq, attempt)
                conn.execute(
                    items.update()
                    .where(items.c.batch_id == batch_id, items.c.seq == seq)
                    .values(
                        status=ItemStatus.RUNNING.value,
                        attempts=attempt,
                        job_id=job_id,
                        updated_at=now,
                    )
                )
                claimed.append(ClaimedItem(seq, job_id, attempt, request_json))
            conn.commit()
        return claimed

    def finish(
        self,
        batch_id: str,
        seq: int,
        job_id: str,
        *,
        completed: bool,
        error: str | None = None,
        max_attempts: int,
        final: ItemStatus | None = None,
    ) -> ItemStatus | None:
        """Apply the outcome of attempt ``job_id`` of item ``seq``.

        Completed: ``completed``. Failed: back to ``pending`` while fewer than ``max_attempts``
        attempts were made, else ``dead_letter``; ``error`` is kept either way. ``final``
        (``rejected`` or ``canceled``) ends a failed item so, whatever attempts are left.

        Returns:
            The item's new status, or ``None`` when ``job_id`` is not the item's running attempt
            (a repeated or late report: nothing changed).
        """
        if completed:
            status = ItemStatus.COMPLETED
        items = _items()
        with translate_errors(), self._engine.begin() as conn:
            row = conn.execute(
                select(items.c.attempts).where(
                    items.c.batch_id == batch_id,
                    items.c.seq == seq,
                    items.c.job_id == job_id,
                    items.c.status == ItemStatus.RUNNING.value,
                )
            ).first()
            if row is None:
                return None
            if not completed:
                attempts_left = row.attempts < max_attempts
                status = ItemStatus.PENDING if attempts_left else ItemStatus.DEAD_LETTER
                if final is not None:
                    status = final
            changed = conn.execute(
                items.update()
                .where(
                    items.c.batch_id == batch_id,
                    items.c.seq == seq,
                    items.c.job_id == job_id,
                    items.c.status == ItemStatus.RUNNING.value,
                )
                .values(
                    status=status.value,
                    last_error=error if not completed else None,
                    updated_at=utc_now(),
                )
            ).rowcount
        return status if changed else None

    def unstarted(self, batch_id: str) -> list[ClaimedItem]:
        """Running attempts whose job has written no record yet: not started, or just starting.

        A step starts these (again): starting is idempotent by the job's workflow id, so an
        attempt whose start was lost with a worker is started, and one already out is left be.
        """
        items = _items()
        jobs = _jobs()
        query = (
            select(items.c.seq, items.c.job_id, items.c.attempts, items.c.request_json)
            .where(items.c.batch_id == batch_id, items.c.status == ItemStatus.RUNNING.value)
            .where(~exists().where(jobs.c.job_id == items.c.job_id))
            .order_by(items.c.seq)
        )
        with translate_errors(), self._engine.connect() as conn:
            return [
                ClaimedItem(seq, job_id, attempts, request_json)
                for seq, job_id, attempts, request_json in conn.execute(query).all()
            ]

    def collect(self, batch_id: str, max_attempts: int) -> int:
        """Apply the outcome of every running attempt whose job has ended (:meth:`finish`).

        A job that ended ``completed`` completes its item; ``failed`` is a failed attempt,
        retried while attempts are left; ``rejected`` or ``expired`` (a human said no, or did not
        answer) makes the item ``rejected`` and ``canceled`` makes it ``canceled``, not retried.

        Returns:
            How many attempts ended.
        """
        items = _items()
        jobs = _jobs()
        ended = [s.value for s in JobStatus if s.is_terminal]
        query = (
            select(items.c.seq, items.c.job_id, jobs.c.status, jobs.c.error)
            .join(jobs, jobs.c.job_id == items.c.job_id)
            .where(items.c.batch_id == batch_id, items.c.status == ItemStatus.RUNNING.value)
            .where(jobs.c.status.in_(ended))
        )
        with translate_errors(), self._engine.connect() as conn:
            rows = conn.execute(query).all()
        finished = 0
        for seq, job_id, status, error in rows:
            completed = status == JobStatus.COMPLETED.value
            outcome = self.finish(
                batch_id,
                seq,
                job_id,
                completed=completed,
                error=None if completed else (error or f"the job ended {status}"),
                max_attempts=max_attempts,
                final=_FINAL_FOR_JOB.get(status),
            )
            finished += outcome is not None
        return finished

    def counts(self, batch_id: str) -> dict[ItemStatus, int]:
        """Items per status (every status present, 0 when none)."""
        items = _items()
        counts = dict.fromkeys(ItemStatus, 0)
        with translate_errors(), self._engine.connect() as conn:
            for status, n in conn.execute(
                select(items.c.status, func.count())
                .where(items.c.batch_id == batch_id)
                .group_by(items.c.status)
            ):
                counts[ItemStatus(status)] = n
        return counts

    def items(self, batch_id: str) -> list[BatchItemRecord]:
        """Every item of the batch in input order."""
        items = _items()
        with translate_errors(), self._engine.connect() as conn:
            return [
                BatchItemRecord(**row)
                for row in conn.execute(
                    select(items).where(items.c.batch_id == batch_id).order_by(items.c.seq)
                ).mappings()
            ]
