"""Job records and blobs in a SQL database (SQLite for development, PostgreSQL in production).

Everything here is synchronous SQLAlchemy (through sqlmodel): async callers, the API and the
activities, wrap each call in ``asyncio.to_thread``. This is activity and API code, never workflow
code, so timestamps come from the wall clock (``datetime.now(UTC)``).

Hazards this module handles:

- SQLite returns naive datetimes whatever the column says; :class:`UTCDateTime` stores UTC and
  hands back timezone-aware values on every backend.
- Two requests with the same idempotency key can race; the database's UNIQUE constraint decides
  the winner and the loser gets :class:`IdempotencyConflictError`, never a second job.
- A database that is down surfaces as SQLAlchemy's ``OperationalError``; it is translated into
  :class:`StoreUnavailableError` (retryable) at this boundary.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Dialect, Engine, Text, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, Session, SQLModel, col, select

from core.errors import AgentflowError, BlobNotFoundError, ErrorType
from core.models import AgentRequest, AgentResult, BlobRef, JobStatus

BLOB_PREVIEW_CHARS = 200
"""How many leading characters of a blob :meth:`JobStore.put_blob` copies into its preview."""

SQLITE_BUSY_TIMEOUT_MS = 5000
"""How long a SQLite connection waits for another writer's lock before failing, in ms."""

POSTGRES_CONNECT_TIMEOUT_S = 5
"""Connect timeout for PostgreSQL in seconds, so a down database fails a call promptly."""


# --------------------------------------------------------------------------- errors


class StoreUnavailableError(AgentflowError):
    """The job database cannot be reached or is locked (retryable)."""

    type = ErrorType.STORE_UNAVAILABLE
    retryable = True


class IdempotencyConflictError(Exception):
    """A job with this idempotency key already exists.

    Not a domain error for Temporal (it never leaves the API); the API answers it with the existing
    job.

    Attributes:
        existing_job_id: the job that owns the key.
    """

    def __init__(self, existing_job_id: str) -> None:
        """Create the error naming the job that already owns the key."""
        super().__init__(f"idempotency key already used by job {existing_job_id}")
        self.existing_job_id = existing_job_id


@contextmanager
def _translate_errors() -> Iterator[None]:
    """Raise SQLAlchemy's connection-level failures as :class:`StoreUnavailableError`."""
    try:
        yield
    except (OperationalError, PoolTimeoutError) as exc:
        raise StoreUnavailableError(f"job database unavailable: {exc}") from exc


# --------------------------------------------------------------------------- column types


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so values are stored as naive UTC
    and UTC is attached again when read.

    Raises:
        ValueError: when binding a naive datetime (its zone would be a guess).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert to UTC before storing (naive UTC on SQLite)."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Return an aware UTC datetime."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- tables


class JobRecord(SQLModel, table=True):
    """One job: the request, its status, and the result once it is recorded.

    Attributes:
        job_id: the job's id (the workflow id is ``agent-<job_id>``).
        status: a :class:`core.models.JobStatus` value.
        query: the request's query ("" when the job was created from a result alone).
        request_json: JSON of the :class:`AgentRequest`, ``None`` when unknown.
        result_json: JSON of the latest :class:`AgentResult`, ``None`` until one is recorded.
        tier: the tier that answered (the escalation tier when the job escalated).
        cost_usd: total model cost in USD; prompt_tokens / completion_tokens: totals over calls.
        idempotency_key: the client's key (UNIQUE; several NULLs allowed).
        request_hash: SHA-256 hex of the canonical request JSON (:func:`request_hash`).
        created_at / updated_at / completed_at: aware UTC datetimes.
        duration_ms: ``completed_at - created_at`` in milliseconds, once terminal.
    """

    __tablename__ = "jobs"

    job_id: str = Field(primary_key=True, max_length=128)
    workflow_id: str = Field(max_length=256)
    status: str = Field(index=True, max_length=32)
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
    created_at: datetime = Field(default_factory=_now, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=_now, sa_type=UTCDateTime)
    completed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    duration_ms: float | None = None

    def to_result(self) -> AgentResult | None:
        """The recorded :class:`AgentResult`, or ``None`` when none was recorded yet."""
        if self.result_json is None:
            return None
        return AgentResult.model_validate_json(self.result_json)

    def to_request(self) -> AgentRequest | None:
        """The original :class:`AgentRequest`; ``None`` when the job was created from a result."""
        if self.request_json is None:
            return None
        return AgentRequest.model_validate_json(self.request_json)


class BlobRecord(SQLModel, table=True):
    """A content-addressed text payload kept outside Temporal history.

    Attributes:
        blob_id: SHA-256 hex digest of the UTF-8 content.
        size_bytes: length of the UTF-8 content in bytes.
    """

    __tablename__ = "blobs"

    blob_id: str = Field(primary_key=True, max_length=64)
    size_bytes: int
    content: str = Field(sa_type=Text)
    created_at: datetime = Field(default_factory=_now, sa_type=UTCDateTime)


# --------------------------------------------------------------------------- engine


def make_engine(database_url: str, *, connect_args: dict[str, Any] | None = None) -> Engine:
    """Create the engine for ``database_url``.

    SQLite: creates the file's parent folder, allows use from worker threads, and sets WAL journal
    mode and a busy timeout on every connection. PostgreSQL (``postgresql+psycopg://``): pings
    connections before use and bounds the connect time.

    Args:
        database_url: a SQLAlchemy URL, ``sqlite:///path`` or ``postgresql+psycopg://...``.
        connect_args: extra DBAPI connect arguments, merged over the defaults (for example
            ``{"options": "-csearch_path=myschema"}`` for PostgreSQL).

    Returns:
        A synchronous SQLAlchemy engine. No connection is opened yet.

    Raises:
        ValueError: the URL names neither SQLite nor PostgreSQL.
    """
    url = make_url(database_url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, **(connect_args or {})}
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

        return engine
    if backend == "postgresql":
        return create_engine(
            url,
            pool_pre_ping=True,
            connect_args={"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S, **(connect_args or {})},
        )
    raise ValueError(
        f"unsupported database URL {url.render_as_string()!r}: use sqlite or postgresql"
    )


def create_tables(engine: Engine) -> None:
    """Create the ``jobs`` and ``blobs`` tables when missing (no migrations yet).

    Raises:
        StoreUnavailableError: the database is unreachable (retryable).
    """
    tables = [SQLModel.metadata.tables["jobs"], SQLModel.metadata.tables["blobs"]]
    # The worker and the API start together and both create the tables; on a fresh database
    # one can lose the check-then-create race ("table already exists"). A second pass sees the
    # winner's tables and creates nothing (one more pass per table that can race).
    attempts = 2 * len(tables) + 1
    for attempt in range(1, attempts + 1):
        try:
            with _translate_errors():
                SQLModel.metadata.create_all(engine, tables=tables)
            return
        except StoreUnavailableError:
            if attempt == attempts:
                raise


def request_hash(request: AgentRequest) -> str:
    """SHA-256 hex digest of the request's canonical JSON (keys sorted, no whitespace).

    Two requests that compare equal hash the same, so a retried submit with the same idempotency
    key can be told apart from a different request reusing the key.
    """
    canonical = json.dumps(
        request.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _workflow_id(job_id: str) -> str:
    return f"agent-{job_id}"


# --------------------------------------------------------------------------- store


class JobStore:
    """Job records and blobs. Every method is synchronous and thread-safe.

    Every method raises :class:`StoreUnavailableError` (retryable) when the database is down.
    """

    def __init__(self, engine: Engine) -> None:
        """Use ``engine`` (see :func:`make_engine`); tables must exist (:func:`create_tables`)."""
        self._engine = engine

    @property
    def engine(self) -> Engine:
        """The engine this store talks to."""
        return self._engine

    def _session(self) -> Session:
        return Session(self._engine, expire_on_commit=False)

    def ping(self) -> None:
        """Run ``SELECT 1``.

        Raises:
            StoreUnavailableError: the database did not answer (retryable).
        """
        with _translate_errors(), self._engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    # ----------------------------------------------------------------------- jobs

    def create_job(
        self,
        job_id: str,
        workflow_id: str,
        request: AgentRequest,
        idempotency_key: str | None,
    ) -> JobRecord:
        """Insert a RUNNING job for ``request``.

        Args:
            job_id: the new job's id.
            workflow_id: the Temporal workflow id that runs it.
            request: the accepted request (stored as JSON, with its hash).
            idempotency_key: the client's key, or ``None``.

        Returns:
            The stored record.

        Raises:
            IdempotencyConflictError: another job owns ``idempotency_key``; decided by the UNIQUE
                constraint, so of two racing creates exactly one succeeds.
            ValueError: a job with ``job_id`` already exists.
            StoreUnavailableError: the database is down (retryable).
        """
        now = _now()
        record = JobRecord(
            job_id=job_id,
            workflow_id=workflow_id,
            status=JobStatus.RUNNING.value,
            query=request.query,
            request_json=request.model_dump_json(),
            idempotency_key=idempotency_key,
            request_hash=request_hash(request),
            created_at=now,
            updated_at=now,
        )
        with _translate_errors(), self._session() as session:
            session.add(record)
            try:
                session.commit()
            except IntegrityError as exc:
                session.rollback()
                if idempotency_key is not None:
                    existing = self._find_by_key(session, idempotency_key)
                    if existing is not None:
                        raise IdempotencyConflictError(existing.job_id) from exc
                raise ValueError(f"job {job_id} already exists") from exc
            return record

    @staticmethod
    def _find_by_key(session: Session, key: str) -> JobRecord | None:
        statement = select(JobRecord).where(col(JobRecord.idempotency_key) == key)
        return session.exec(statement).first()

    def find_by_idempotency_key(self, key: str) -> JobRecord | None:
        """The job created with idempotency key ``key``, or ``None``.

        Raises:
            StoreUnavailableError: the database is down (retryable).
        """
        with _translate_errors(), self._session() as session:
            return self._find_by_key(session, key)

    def delete_job(self, job_id: str) -> None:
        """Delete the job ``job_id`` if it exists (used when starting its workflow failed).

        Raises:
            StoreUnavailableError: the database is down (retryable).
        """
        with _translate_errors(), self._session() as session:
            record = session.get(JobRecord, job_id)
            if record is not None:
                session.delete(record)
                session.commit()

    def get_job(self, job_id: str) -> JobRecord | None:
        """The job ``job_id``, or ``None``.

        Raises:
            StoreUnavailableError: the database is down (retryable).
        """
        with _translate_errors(), self._session() as session:
            return session.get(JobRecord, job_id)

    def list_jobs(
        self, status: JobStatus | None = None, limit: int = 50, offset: int = 0
    ) -> list[JobRecord]:
        """Jobs newest first, optionally only those with ``status``.

        Args:
            status: keep only jobs in this status; ``None`` for all.
            limit: most records returned (>= 0).
            offset: records skipped first (>= 0), for paging.

        Raises:
            StoreUnavailableError: the database is down (retryable).
        """
        statement = select(JobRecord)
        if status is not None:
            statement = statement.where(col(JobRecord.status) == status.value)
        statement = (
            statement.order_by(col(JobRecord.created_at).desc(), col(JobRecord.job_id).desc())
            .offset(offset)
            .limit(limit)
        )
        with _translate_errors(), self._session() as session:
            return list(session.exec(statement).all())

    def record_result(self, result: AgentResult) -> JobRecord:
        """Store ``result`` on its job, creating the job when it is unknown.

        Sets status, ``result_json``, tier (``escalated_to`` when set, else the selected tier),
        cost and token totals over ``result.usage``, ``response_cache_hit``, ``error`` and
        ``updated_at``; once the status is terminal also ``completed_at`` (first time only) and
        ``duration_ms``. A job unknown to the store (its workflow was started directly through
        Temporal) is created from the result alone, with ``request_json`` ``None``.

        Idempotent: recording a result equal to the stored one changes nothing.

        Returns:
            The stored record.

        Raises:
            StoreUnavailableError: the database is down (retryable).
        """
        with _translate_errors():
            try:
                return self._record_result_once(result)
            except IntegrityError:
                # Two recorders raced to create the same unknown job; the row exists now.
                return self._record_result_once(result)

    def _record_result_once(self, result: AgentResult) -> JobRecord:
        result_json = result.model_dump_json()
        status = result.status
        with self._session() as session:
            record = session.get(JobRecord, result.job_id)
            now = _now()
            if record is None:
                record = JobRecord(
                    job_id=result.job_id,
                    workflow_id=_workflow_id(result.job_id),
                    status=status.value,
                    created_at=now,
                    updated_at=now,
                )
            elif record.result_json == result_json and record.status == status.value:
                return record
            tier = result.escalated_to or (result.selection.tier if result.selection else None)
            record.status = status.value
            record.result_json = result_json
            record.tier = tier.value if tier is not None else None
            record.cost_usd = result.total_cost_usd
            record.prompt_tokens = sum(u.prompt_tokens for u in result.usage)
            record.completion_tokens = sum(u.completion_tokens for u in result.usage)
            record.response_cache_hit = result.response_cache_hit
            record.error = result.error
            record.updated_at = now
            if status.is_terminal:
                if record.completed_at is None:
                    record.completed_at = now
                elapsed = record.completed_at - record.created_at
                record.duration_ms = elapsed.total_seconds() * 1000.0
            session.add(record)
            session.commit()
            return record

    # ----------------------------------------------------------------------- blobs

    def put_blob(self, text: str) -> BlobRef:
        """Store ``text`` under its SHA-256; storing the same text again is a no-op.

        Returns:
            A :class:`BlobRef` with the digest, the UTF-8 size in bytes and the first
            ``BLOB_PREVIEW_CHARS`` characters as preview.

        Raises:
            StoreUnavailableError: the database is down (retryable).
        """
        data = text.encode("utf-8")
        blob_id = hashlib.sha256(data).hexdigest()
        ref = BlobRef(blob_id=blob_id, size_bytes=len(data), preview=text[:BLOB_PREVIEW_CHARS])
        with _translate_errors(), self._session() as session:
            if session.get(BlobRecord, blob_id) is not None:
                return ref
            session.add(BlobRecord(blob_id=blob_id, size_bytes=len(data), content=text))
            try:
                session.commit()
            except IntegrityError:
                # A concurrent writer stored the same content first: same id, same bytes.
                session.rollback()
        return ref

    def get_blob(self, blob_id: str) -> str:
        """The text stored under ``blob_id``.

        Raises:
            BlobNotFoundError: no such blob (non-retryable).
            StoreUnavailableError: the database is down (retryable).
        """
        with _translate_errors(), self._session() as session:
            record = session.get(BlobRecord, blob_id)
        if record is None:
            raise BlobNotFoundError(f"blob {blob_id} not found")
        return record.content
