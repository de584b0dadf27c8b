"""Job records: the database projection of each job's workflow.

The workflow owns a job's state. At each status change it writes a projection here (through the
``record_job`` activity) so jobs can be listed and their outcome read after Temporal's retention
has removed the workflow. Each write carries the workflow's ``revision`` counter and a write older
than the stored one changes nothing, so a retried write can never move a job backwards.

Every method is synchronous and thread-safe, and raises
:class:`core.errors.StoreUnavailableError` (retryable) when the database is down or locked and
:class:`core.errors.StoreRejectedError` (non-retryable) when it refuses the statement.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Engine, Insert, Select, Table, Text, Update, bindparam, text
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import defer
from sqlmodel import Field, Session, SQLModel, col, select

from core.ids import workflow_id_for
from core.models import AgentRequest, AgentResult, JobStatus
from infra.db import UTCDateTime, translate_errors, utc_now


class JobRecord(SQLModel, table=True):
    """One job as the workflow last recorded it.

    Attributes:
        job_id: the job's id (the workflow id is ``agent-<job_id>``).
        workflow_id: the Temporal workflow id.
        status: a :class:`core.models.JobStatus` value.
        revision: the workflow's projection counter; higher revisions win.
        query: the request's query.
        request_json: JSON of the :class:`AgentRequest`, ``None`` when unknown.
        result_json: JSON of the latest :class:`AgentResult`, ``None`` until one is recorded.
        tier: the tier that answered (the escalation tier when the job escalated).
        cost_usd: total model cost in USD; prompt_tokens / completion_tokens: totals over calls.
        idempotency_key: the client's key (UNIQUE; several NULLs allowed).
        request_hash: SHA-256 hex of the canonical request JSON (:func:`core.ids.request_hash`).
        owner: key id of the API key that submitted the job (:mod:`core.auth`); ``None`` for
            jobs submitted without one (visible to admin keys only).
        created_at: when the workflow started; updated_at / completed_at: aware UTC datetimes.
        duration_ms: ``completed_at - created_at`` in milliseconds, once terminal.
        events_json: the job's whole event stream as a JSON array (``core.events.JobEvent``,
            offsets filled in, the terminal event last), stored once with the terminal record;
            ``None`` before, and for jobs that ended before streams were stored.
    """

    __tablename__ = "jobs"

    job_id: str = Field(primary_key=True, max_length=128)
    workflow_id: str = Field(max_length=256)
    status: str = Field(index=True, max_length=32)
    revision: int = Field(default=0, sa_column_kwargs={"server_default": text("0")})
    query: str = Field(default="", sa_type=Text)
    request_json: str | None = Field(default=None, sa_type=Text)
    result_json: str | None = Field(default=None, sa_type=Text)
    tier: str | None = Field(default=None, max_length=32)
    cost_usd: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    response_cache_hit: bool = False
    error: str | None = Field(default=None, sa_type=Text)
    idempotency_key: str | None = Field(default=None, unique=True, max_length=256)
    request_hash: str | None = Field(default=None, max_length=64)
    owner: str | None = Field(default=None, index=True, max_length=32)
    created_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utc_now, sa_type=UTCDateTime)
    completed_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    duration_ms: float | None = None
    events_json: str | None = Field(default=None, sa_type=Text)

    def to_result(self) -> AgentResult | None:
        """The recorded :class:`AgentResult`, or ``None`` when none was recorded yet."""
        if self.result_json is None:
            return None
        return AgentResult.model_validate_json(self.result_json)

    def to_request(self) -> AgentRequest | None:
        """The original :class:`AgentRequest`; ``None`` when it was not recorded."""
        if self.request_json is None:
            return None
        return AgentRequest.model_validate_json(self.request_json)


def _jobs_table() -> Table:
    return cast(Table, JobRecord.__table__)  # type: ignore[attr-defined]


@functools.cache
def _SELECT_JOB() -> Select[Any]:
    """The job's row by ``b_job_id``; built once, so SQLAlchemy's compiled cache answers."""
    table = _jobs_table()
    return sa_select(table).where(table.c.job_id == bindparam("b_job_id"))


@functools.cache
def _SELECT_JOB_FOR_UPDATE() -> Select[Any]:
    """:func:`_SELECT_JOB` locking the row (PostgreSQL)."""
    return _SELECT_JOB().with_for_update()


@functools.cache
def _INSERT_JOB() -> Insert:
    """An INSERT of a job row; the columns are the parameters given."""
    return _jobs_table().insert()


@functools.cache
def _UPDATE_JOB() -> Update:
    """An UPDATE of the job ``b_job_id``; the columns set are the parameters given."""
    table = _jobs_table()
    return table.update().where(table.c.job_id == bindparam("b_job_id"))


class JobStore:
    """Reads and writes job records (see the module docstring for errors)."""

    def __init__(self, engine: Engine) -> None:
        """Use ``engine`` (see :func:`infra.db.make_engine`); tables must exist."""
        self._engine = engine

    @property
    def engine(self) -> Engine:
        """The engine this store talks to."""
        return self._engine

    def _session(self) -> Session:
        return Session(self._engine, expire_on_commit=False)

    def ping(self) -> None:
        """Check that the database answers and accepts writes.

        Runs ``SELECT 1`` and an empty write transaction (``BEGIN IMMEDIATE`` on SQLite), so a
        database whose writes are locked is reported as unavailable.

        Raises:
            StoreUnavailableError: the database did not answer or is locked (retryable).
        """
        with translate_errors(), self._engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            if self._engine.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                conn.exec_driver_sql("ROLLBACK")

    def get_job(self, job_id: str) -> JobRecord | None:
        """The job ``job_id``, or ``None``."""
        with translate_errors(), self._session() as session:
            return session.get(JobRecord, job_id)

    def find_by_idempotency_key(self, key: str) -> JobRecord | None:
        """The job recorded with idempotency key ``key``, or ``None``."""
        statement = select(JobRecord).where(col(JobRecord.idempotency_key) == key)
        with translate_errors(), self._session() as session:
            return session.exec(statement).first()

    def list_jobs(
        self,
        status: JobStatus | None = None,
        limit: int = 50,
        offset: int = 0,
        *,
        owner: str | None = None,
    ) -> list[JobRecord]:
        """Jobs newest first, optionally only those with ``status`` or of one owner.

        Args:
            status: keep only jobs in this status; ``None`` for all.
            limit: most records returned (>= 0).
            offset: records skipped first (>= 0), for paging.
            owner: keep only jobs submitted by this key id; ``None`` for every job.
        """
        # The stored event stream is read one job at a time (its events route), never listed.
        statement = select(JobRecord).options(defer(cast(Any, JobRecord.events_json)))
        if owner is not None:
            statement = statement.where(col(JobRecord.owner) == owner)
        if status is not None:
            statement = statement.where(col(JobRecord.status) == status.value)
        statement = (
            statement.order_by(col(JobRecord.created_at).desc(), col(JobRecord.job_id).desc())
            .offset(offset)
            .limit(limit)
        )
        with translate_errors(), self._session() as session:
            return list(session.exec(statement).all())

    def record(
        self,
        result: AgentResult,
        *,
        revision: int = 0,
        request: AgentRequest | None = None,
        created_at: datetime | None = None,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        owner: str | None = None,
        events_json: str | None = None,
    ) -> JobRecord:
        """Store the projection ``result`` of job ``result.job_id`` (insert or update).

        Sets status, ``result_json``, tier (``escalated_to`` when set, else the selected tier),
        cost and token totals over ``result.usage``, ``response_cache_hit``, ``error`` and
        ``updated_at``; once the status is terminal also ``completed_at`` (first time only) and
        ``duration_ms``. ``request``, ``created_at``, ``idempotency_key``, ``request_hash`` and
        ``owner`` are written when given (the workflow sends them with its first projection).

        A projection whose ``revision`` is lower than the stored one changes nothing, and so does
        one equal to what is stored: a retried or late write never moves a job backwards.

        Args:
            result: the job's state; its ``status`` decides whether the job is terminal.
            revision: the workflow's projection counter (0 for writers that keep none).
            request: the job's request.
            created_at: when the job started (the workflow's start time), aware.
            idempotency_key: the client's key, if any.
            request_hash: :func:`core.ids.request_hash` of ``request``.
            owner: key id of the submitting API key.
            events_json: the job's event stream (JSON array), stored with a terminal
                ``result`` only.

        Returns:
            The stored record.
        """
        with translate_errors():
            try:
                return self._record_once(
                    result,
                    revision,
                    request,
                    created_at,
                    idempotency_key,
                    request_hash,
                    owner,
                    events_json,
                )
            except IntegrityError:
                # Two writers raced to insert the same job; the row exists now.
                return self._record_once(
                    result,
                    revision,
                    request,
                    created_at,
                    idempotency_key,
                    request_hash,
                    owner,
                    events_json,
                )

    def _record_once(
        self,
        result: AgentResult,
        revision: int,
        request: AgentRequest | None,
        created_at: datetime | None,
        idempotency_key: str | None,
        request_hash: str | None,
        owner: str | None,
        events_json: str | None,
    ) -> JobRecord:
        result_json = result.model_dump_json()
        status = result.status
        table = _jobs_table()
        sqlite = self._engine.dialect.name == "sqlite"
        # Core statements, not the ORM: a job writes two records, and the session's identity
        # map and unit of work cost about as much as the writes (issue 21's profile).
        with self._engine.connect() as conn:
            # Read and write under one lock, so a concurrent writer cannot commit between the
            # revision check and the update (a lost update would move the job backwards):
            # SQLite takes the write lock up front, PostgreSQL locks the row (FOR UPDATE).
            if sqlite:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            query = _SELECT_JOB if sqlite else _SELECT_JOB_FOR_UPDATE
            row = conn.execute(query(), {"b_job_id": result.job_id}).mappings().first()
            now = utc_now()
            if row is not None and (
                revision < row["revision"]
                or (
                    revision == row["revision"]
                    and row["result_json"] == result_json
                    and row["status"] == status.value
                )
            ):
                conn.rollback()
                return JobRecord(**row)
            tier = result.escalated_to or (result.selection.tier if result.selection else None)
            changes: dict[str, Any] = {
                "revision": revision,
                "status": status.value,
                "result_json": result_json,
                "tier": tier.value if tier is not None else None,
                "cost_usd": result.total_cost_usd,
                "prompt_tokens": sum(u.prompt_tokens for u in result.usage),
                "completion_tokens": sum(u.completion_tokens for u in result.usage),
                "response_cache_hit": result.response_cache_hit,
                "error": result.error,
                "updated_at": now,
            }
            if request is not None:
                changes["query"] = request.query
                changes["request_json"] = request.model_dump_json()
            if idempotency_key is not None:
                changes["idempotency_key"] = idempotency_key
            if request_hash is not None:
                changes["request_hash"] = request_hash
            if owner is not None:
                changes["owner"] = owner
            created = row["created_at"] if row is not None else (created_at or now)
            if status.is_terminal:
                if events_json is not None:
                    changes["events_json"] = events_json
                completed = row["completed_at"] if row is not None else None
                if completed is None:
                    completed = changes["completed_at"] = now
                changes["duration_ms"] = (completed - created).total_seconds() * 1000.0
            if row is None:
                record = JobRecord(
                    job_id=result.job_id,
                    workflow_id=workflow_id_for(result.job_id),
                    created_at=created,
                    **changes,
                )
                conn.execute(
                    _INSERT_JOB(), {c.name: getattr(record, c.name) for c in table.columns}
                )
            else:
                record = JobRecord(**{**row, **changes})
                conn.execute(_UPDATE_JOB(), {"b_job_id": result.job_id, **changes})
            conn.commit()
            return record
