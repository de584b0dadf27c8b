"""The job database against real SQLite and real PostgreSQL (a throwaway schema per test).

Covers ``infra.db`` (engines, tables, error translation), ``infra.jobs`` (the workflow's job
projection), ``infra.payloads`` (Temporal payloads stored in the database, legacy blobs) and the
job identities in ``core.ids``.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy import Engine, MetaData, Table, func, inspect, select
from sqlmodel import Session, SQLModel
from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    StorageDriverClaim,
    StorageDriverRetrieveContext,
    StorageDriverStoreContext,
)

import infra.db
from core.errors import (
    BlobNotFoundError,
    ErrorType,
    StoreRejectedError,
    StoreUnavailableError,
)
from core.ids import job_id_for, request_hash, workflow_id_for
from core.models import (
    AgentRequest,
    AgentResult,
    ContextItem,
    JobStatus,
    ModelUsage,
    SelectionScores,
    SelectModelResult,
    TaskType,
    Tier,
    ToolCall,
)
from infra.db import UTCDateTime, make_engine
from infra.jobs import JobRecord, JobStore
from infra.migrations import create_tables
from infra.payloads import (
    BlobRecord,
    DatabasePayloadDriver,
    PayloadNotFoundError,
    PayloadRecord,
    read_legacy_blob,
)
from infra.temporal import data_converter
from tests.helpers import free_port

# --------------------------------------------------------------------------- fixtures

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def bare_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine on an empty database: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'nested' / 'jobs.db'}")
        yield engine
        engine.dispose()
        return
    url: str = request.getfixturevalue("postgres_url")
    schema = f"test_store_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE SCHEMA "{schema}"'))
    engine = make_engine(url, connect_args={"options": f"-csearch_path={schema}"})
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def engine(bare_engine: Engine) -> Engine:
    """``bare_engine`` with agentflow's tables created."""
    create_tables(bare_engine)
    return bare_engine


@pytest.fixture
def store(engine: Engine) -> JobStore:
    return JobStore(engine)


@pytest.fixture
def driver(engine: Engine) -> DatabasePayloadDriver:
    return DatabasePayloadDriver(engine)


# --------------------------------------------------------------------------- builders


def _request(query: str = "What is the capital of France?") -> AgentRequest:
    return AgentRequest(
        query=query,
        context=[ContextItem(content="France is in Europe.", source="atlas")],
        tool_calls=[ToolCall(id="c1", name="calculator", parameters={"expression": "1+1"})],
        metadata={"user": "ada"},
    )


def _usage(purpose: str, tier: Tier, prompt: int, completion: int, cost: float) -> ModelUsage:
    return ModelUsage(
        purpose=purpose,
        tier=tier,
        provider="simulated",
        model=f"sim-{tier.value}",
        simulated=True,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost_usd=cost,
        latency_ms=12.5,
    )


def _selection(tier: Tier = Tier.SMALL) -> SelectModelResult:
    return SelectModelResult(
        task_type=TaskType.SIMPLE_FACTUAL,
        scores=SelectionScores(
            complexity=1,
            creativity_required=1,
            reasoning_depth=1,
            factual_knowledge=3,
            response_length=50,
        ),
        tier=tier,
        escalation_tier=Tier.MEDIUM,
        reason="simple factual question",
    )


def _running(job_id: str, **overrides: object) -> AgentResult:
    return AgentResult.model_validate({"job_id": job_id, "status": JobStatus.RUNNING, **overrides})


def _completed(job_id: str, **overrides: object) -> AgentResult:
    fields: dict[str, object] = {
        "job_id": job_id,
        "status": JobStatus.COMPLETED,
        "answer": "Paris.",
        "simulated": True,
        "selection": _selection(),
        "usage": [
            _usage("draft", Tier.SMALL, 100, 20, 0.001),
            _usage("final", Tier.SMALL, 300, 40, 0.002),
        ],
    }
    fields.update(overrides)
    return AgentResult.model_validate(fields)


def _assert_utc(value: object) -> None:
    assert isinstance(value, datetime)
    assert value.tzinfo is not None
    assert value.utcoffset() == timedelta(0)


def _row_count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(sqlalchemy.table(table))).one()[0])


# --------------------------------------------------------------------------- core.ids


def test_request_hash_is_canonical() -> None:
    a = AgentRequest(query="q", metadata={"a": 1, "b": 2})
    b = AgentRequest(query="q", metadata={"b": 2, "a": 1})
    assert request_hash(a) == request_hash(b)
    assert request_hash(a) != request_hash(AgentRequest(query="q2"))
    assert request_hash(a) != request_hash(AgentRequest(query="q", metadata={"a": 1, "b": 3}))
    assert len(request_hash(a)) == 64
    int(request_hash(a), 16)  # hex


def test_job_ids() -> None:
    assert job_id_for("key-1") == job_id_for("key-1")
    assert job_id_for("key-1") != job_id_for("key-2")
    assert job_id_for(None) != job_id_for(None)
    assert job_id_for("key-1") != job_id_for(None)
    assert workflow_id_for("j1") != workflow_id_for("j2")
    assert "j1" in workflow_id_for("j1")


# --------------------------------------------------------------------------- record()


def test_first_record_inserts_the_job(store: JobStore) -> None:
    request = _request()
    started = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=timezone(timedelta(hours=2)))
    returned = store.record(
        _running("j1"),
        revision=1,
        request=request,
        created_at=started,
        idempotency_key="key-1",
        request_hash=request_hash(request),
    )
    assert returned.status == JobStatus.RUNNING.value

    got = store.get_job("j1")
    assert got is not None
    assert got.workflow_id == workflow_id_for("j1")
    assert got.status == JobStatus.RUNNING.value
    assert got.revision == 1
    assert got.query == request.query
    assert got.to_request() == request
    assert got.to_result() == _running("j1")
    assert got.idempotency_key == "key-1"
    assert got.request_hash == request_hash(request)
    assert got.created_at == started  # the same instant, handed back in UTC
    _assert_utc(got.created_at)
    _assert_utc(got.updated_at)
    assert got.completed_at is None
    assert got.duration_ms is None
    assert store.get_job("missing") is None


def test_record_without_request_creates_a_bare_job(store: JobStore) -> None:
    result = _completed("direct", status=JobStatus.FAILED, answer=None, error="model down")
    record = store.record(result)
    assert record.workflow_id == workflow_id_for("direct")
    assert record.status == JobStatus.FAILED.value
    assert record.error == "model down"
    assert record.request_json is None
    assert record.to_request() is None

    stored = store.get_job("direct")
    assert stored is not None
    assert stored.to_result() == result
    _assert_utc(stored.created_at)
    assert stored.duration_ms is not None and stored.duration_ms >= 0


def test_higher_revision_updates_and_sets_totals(store: JobStore) -> None:
    request = _request()
    store.record(_running("r1"), revision=1, request=request, idempotency_key="k-r1")
    waiting = store.record(AgentResult(job_id="r1", status=JobStatus.AWAITING_APPROVAL), revision=2)
    assert waiting.status == JobStatus.AWAITING_APPROVAL.value
    assert waiting.completed_at is None
    assert waiting.duration_ms is None
    assert waiting.tier is None

    result = _completed("r1", escalated_to=Tier.MEDIUM, response_cache_hit=True)
    store.record(result, revision=3)

    stored = store.get_job("r1")
    assert stored is not None
    assert stored.revision == 3
    assert stored.status == JobStatus.COMPLETED.value
    assert stored.to_result() == result
    assert stored.tier == Tier.MEDIUM.value  # the escalation tier answered
    assert stored.response_cache_hit is True
    assert stored.cost_usd == pytest.approx(0.003)
    assert stored.prompt_tokens == 400
    assert stored.completion_tokens == 60
    assert stored.error is None
    # Fields only the first write carries survive the later ones.
    assert stored.to_request() == request
    assert stored.idempotency_key == "k-r1"
    assert store.list_jobs(JobStatus.AWAITING_APPROVAL) == []


def test_selected_tier_is_recorded_without_escalation(store: JobStore) -> None:
    stored = store.record(_completed("t1", selection=_selection(Tier.LARGE)), revision=1)
    assert stored.tier == Tier.LARGE.value


def test_lower_revision_changes_nothing(store: JobStore) -> None:
    final = _completed("late")
    store.record(_running("late"), revision=1, request=_request())
    store.record(final, revision=3)
    before = store.get_job("late")
    assert before is not None

    returned = store.record(_running("late", answer="stale"), revision=2)
    assert returned.status == JobStatus.COMPLETED.value

    after = store.get_job("late")
    assert after is not None
    assert after.status == JobStatus.COMPLETED.value
    assert after.to_result() == final
    assert after.revision == 3
    assert after.model_dump() == before.model_dump()


def test_identical_write_is_a_no_op(store: JobStore) -> None:
    result = _completed("same")
    store.record(result, revision=2, request=_request())
    first = store.get_job("same")
    store.record(result, revision=2)
    second = store.get_job("same")
    assert first is not None and second is not None
    assert first.model_dump() == second.model_dump()  # updated_at included
    assert len(store.list_jobs()) == 1


def test_same_revision_with_new_content_updates(store: JobStore) -> None:
    """Writers that keep no revision counter (revision 0) still move the job forward."""
    store.record(_running("v0"), request=_request())
    store.record(_completed("v0"))
    stored = store.get_job("v0")
    assert stored is not None
    assert stored.status == JobStatus.COMPLETED.value
    assert stored.completed_at is not None


def test_concurrent_writes_never_move_a_job_backwards(store: JobStore) -> None:
    """Writers racing on one job (a timed-out attempt still running beside its retry and the
    next revision): whatever the interleaving, the highest revision is what stays stored."""
    writers = 6
    failures: list[BaseException] = []
    for round_ in range(8):
        job_id = f"race{round_}"
        store.record(_running(job_id), revision=0)
        barrier = threading.Barrier(writers)

        def write(
            revision: int, job_id: str = job_id, barrier: threading.Barrier = barrier
        ) -> None:
            barrier.wait()
            try:
                store.record(_running(job_id, answer=f"rev {revision}"), revision=revision)
            except BaseException as exc:  # collected and asserted below
                failures.append(exc)

        threads = [threading.Thread(target=write, args=(r,)) for r in range(1, writers + 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert failures == []
        stored = store.get_job(job_id)
        assert stored is not None
        assert stored.revision == writers
        assert stored.to_result() == _running(job_id, answer=f"rev {writers}")


def test_terminal_status_sets_completed_at_once(store: JobStore) -> None:
    started = datetime.now(UTC) - timedelta(seconds=2)
    store.record(_running("c1"), revision=1, created_at=started)
    done = store.record(_completed("c1"), revision=2)

    assert done.completed_at is not None
    _assert_utc(done.completed_at)
    assert done.completed_at >= started + timedelta(seconds=2)
    assert done.duration_ms == pytest.approx((done.completed_at - started).total_seconds() * 1000.0)
    assert done.duration_ms is not None and done.duration_ms >= 2000

    # A later projection of the finished job keeps the first completion time.
    store.record(_completed("c1", answer="Paris, France."), revision=3)
    again = store.get_job("c1")
    assert again is not None
    assert again.to_result() == _completed("c1", answer="Paris, France.")
    assert again.completed_at == done.completed_at
    assert again.duration_ms == pytest.approx(done.duration_ms)


def test_idempotency_key_lookup(store: JobStore) -> None:
    store.record(_running("first"), revision=1, idempotency_key="same-key")
    found = store.find_by_idempotency_key("same-key")
    assert found is not None and found.job_id == "first"
    assert store.find_by_idempotency_key("other-key") is None
    # Jobs without a key never collide with each other.
    store.record(_running("a"), revision=1)
    store.record(_running("b"), revision=1)
    assert {r.job_id for r in store.list_jobs()} == {"first", "a", "b"}


def test_reused_idempotency_key_is_rejected(store: JobStore) -> None:
    store.record(_running("first"), revision=1, idempotency_key="same-key")
    with pytest.raises(StoreRejectedError) as info:
        store.record(_running("second"), revision=1, idempotency_key="same-key")
    assert info.value.type is ErrorType.STORE_REJECTED
    assert not info.value.retryable
    assert "same-key" not in str(info.value)
    assert store.get_job("second") is None
    found = store.find_by_idempotency_key("same-key")
    assert found is not None and found.job_id == "first"


def test_list_filters_orders_newest_first_and_pages(store: JobStore) -> None:
    base = datetime(2030, 1, 1, tzinfo=UTC)
    # Inserted out of creation order: the list follows created_at, not insertion.
    for i in (2, 0, 4, 1, 3):
        store.record(_running(f"j{i}"), revision=1, created_at=base + timedelta(minutes=i))
    store.record(_completed("j1"), revision=2)
    store.record(_completed("j3", status=JobStatus.FAILED, answer=None, error="boom"), revision=2)

    assert [r.job_id for r in store.list_jobs()] == ["j4", "j3", "j2", "j1", "j0"]
    assert [r.job_id for r in store.list_jobs(JobStatus.RUNNING)] == ["j4", "j2", "j0"]
    assert [r.job_id for r in store.list_jobs(JobStatus.COMPLETED)] == ["j1"]
    assert [r.job_id for r in store.list_jobs(JobStatus.FAILED)] == ["j3"]
    assert store.list_jobs(JobStatus.CANCELED) == []
    assert [r.job_id for r in store.list_jobs(limit=2)] == ["j4", "j3"]
    assert [r.job_id for r in store.list_jobs(limit=2, offset=2)] == ["j2", "j1"]
    assert [r.job_id for r in store.list_jobs(JobStatus.RUNNING, limit=2, offset=1)] == [
        "j2",
        "j0",
    ]
    assert store.list_jobs(offset=5) == []


def test_paging_is_stable_when_creation_times_tie(store: JobStore) -> None:
    same = datetime(2030, 1, 1, tzinfo=UTC)
    ids = {f"tie{i}" for i in range(7)}
    for job_id in sorted(ids):
        store.record(_running(job_id), revision=1, created_at=same)
    pages = [[r.job_id for r in store.list_jobs(limit=3, offset=o)] for o in (0, 3, 6)]
    flat = [job_id for page in pages for job_id in page]
    assert sorted(flat) == sorted(ids)  # every job exactly once across the pages
    assert flat == [r.job_id for r in store.list_jobs()]


def test_ping(store: JobStore) -> None:
    store.ping()


def test_job_record_is_tz_aware_even_when_built_in_python() -> None:
    record = JobRecord(job_id="x", workflow_id="agent-x", status="RUNNING")
    assert record.created_at.tzinfo is not None
    assert record.created_at.utcoffset() == timedelta(0)


def test_naive_datetime_is_refused(store: JobStore) -> None:
    with pytest.raises(StoreRejectedError):
        store.record(_running("naive"), created_at=datetime(2030, 1, 1))
    assert store.get_job("naive") is None
    with pytest.raises(ValueError, match="naive"):
        UTCDateTime().process_bind_param(datetime(2030, 1, 1), store.engine.dialect)


# --------------------------------------------------------------------------- create_tables


def test_create_tables_upgrades_an_older_jobs_table(bare_engine: Engine) -> None:
    """A database created before ``revision`` existed gains the column and keeps its rows."""
    old = MetaData()
    old_jobs = Table(
        "jobs",
        old,
        *(c._copy() for c in SQLModel.metadata.tables["jobs"].columns if c.name != "revision"),
    )
    old.create_all(bare_engine)
    created = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    with bare_engine.begin() as conn:
        conn.execute(
            old_jobs.insert().values(
                job_id="old",
                workflow_id="agent-old",
                status=JobStatus.RUNNING.value,
                query="from before the upgrade",
                cost_usd=0.0,
                prompt_tokens=0,
                completion_tokens=0,
                response_cache_hit=False,
                created_at=created,
                updated_at=created,
            )
        )
    assert "revision" not in {c["name"] for c in inspect(bare_engine).get_columns("jobs")}

    create_tables(bare_engine)
    create_tables(bare_engine)  # a second start-up changes nothing and does not fail

    columns = {c["name"] for c in inspect(bare_engine).get_columns("jobs")}
    assert columns == set(SQLModel.metadata.tables["jobs"].columns.keys())
    assert {"jobs", "payloads", "blobs"} <= set(inspect(bare_engine).get_table_names())

    store = JobStore(bare_engine)
    old_job = store.get_job("old")
    assert old_job is not None
    assert old_job.revision == 0
    assert old_job.created_at == created

    store.record(_completed("old"), revision=1)
    upgraded = store.get_job("old")
    assert upgraded is not None
    assert upgraded.status == JobStatus.COMPLETED.value
    assert upgraded.revision == 1
    assert upgraded.query == "from before the upgrade"
    # And the ordering guard works on upgraded rows.
    store.record(_running("old"), revision=0)
    stored = store.get_job("old")
    assert stored is not None and stored.status == JobStatus.COMPLETED.value
    store.record(_running("new"), revision=1)
    assert {r.job_id for r in store.list_jobs()} == {"old", "new"}


def test_create_tables_twice_keeps_data(store: JobStore) -> None:
    store.record(_completed("kept"), revision=1)
    create_tables(store.engine)
    stored = store.get_job("kept")
    assert stored is not None and stored.to_result() == _completed("kept")


def test_create_tables_survives_a_concurrent_creator(tmp_path: Path) -> None:
    """Worker and API create tables at the same time on a fresh database: both succeed."""
    url = f"sqlite:///{tmp_path / 'race.db'}"
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def create() -> None:
        engine = make_engine(url)
        barrier.wait()
        try:
            create_tables(engine)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)
        finally:
            engine.dispose()

    for _ in range(3):
        (tmp_path / "race.db").unlink(missing_ok=True)
        threads = [threading.Thread(target=create) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


def test_sqlite_pragmas(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'a' / 'b' / 'db.sqlite'}")
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("PRAGMA journal_mode")).scalar() == "wal"
        assert (
            conn.execute(sqlalchemy.text("PRAGMA busy_timeout")).scalar()
            == infra.db.SQLITE_BUSY_TIMEOUT_MS
        )
    engine.dispose()


def test_unsupported_url() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        make_engine("mysql://localhost/db")


# --------------------------------------------------------------------------- errors


def test_locked_sqlite_is_unavailable_then_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holding the write lock is a retryable failure, not a refusal."""
    monkeypatch.setattr(infra.db, "SQLITE_BUSY_TIMEOUT_MS", 100)  # fail fast, not after 5 s
    path = tmp_path / "locked.db"
    engine = make_engine(f"sqlite:///{path}")
    create_tables(engine)
    store = JobStore(engine)
    store.record(_running("held"), revision=1)

    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreUnavailableError) as info:
            store.record(_completed("held"), revision=2)
        assert info.value.type is ErrorType.STORE_UNAVAILABLE
        assert info.value.retryable
        with pytest.raises(StoreUnavailableError):
            store.ping()
        with pytest.raises(StoreUnavailableError):
            store.record(_running("new"), revision=1)
    finally:
        other.execute("ROLLBACK")
        other.close()

    store.ping()
    store.record(_completed("held"), revision=2)
    stored = store.get_job("held")
    assert stored is not None and stored.status == JobStatus.COMPLETED.value
    engine.dispose()


@pytest.mark.parametrize(
    "bare_engine", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_nul_on_postgres_is_rejected_without_leaking_the_statement(store: JobStore) -> None:
    """PostgreSQL text cannot hold NUL: a refusal that retrying cannot fix."""
    assert store.engine.dialect.name == "postgresql"
    query = "tell me the secret \x00 recipe"
    with pytest.raises(StoreRejectedError) as info:
        store.record(_running("nul"), revision=1, request=_request(query))
    assert not isinstance(info.value, StoreUnavailableError)
    assert info.value.type is ErrorType.STORE_REJECTED
    assert not info.value.retryable
    message = str(info.value)
    assert message == info.value.message
    for leaked in ("INSERT", "SELECT", "jobs", "secret", "recipe", query):
        assert leaked not in message
    assert store.get_job("nul") is None
    # The store keeps working after the refusal.
    store.record(_running("nul"), revision=1, request=_request("a clean query"))
    assert store.get_job("nul") is not None


def test_closed_postgres_port_is_unavailable() -> None:
    engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test")
    store = JobStore(engine)
    try:
        with pytest.raises(StoreUnavailableError) as info:
            store.ping()
        assert info.value.type is ErrorType.STORE_UNAVAILABLE
        assert info.value.retryable
        assert "127.0.0.1" not in str(info.value)
        with pytest.raises(StoreUnavailableError):
            create_tables(engine)
        with pytest.raises(StoreUnavailableError):
            store.get_job("x")
        with pytest.raises(StoreUnavailableError):
            store.list_jobs()
        with pytest.raises(StoreUnavailableError):
            store.find_by_idempotency_key("k")
        with pytest.raises(StoreUnavailableError):
            store.record(_completed("x"), revision=1)
        with pytest.raises(StoreUnavailableError):
            read_legacy_blob(engine, "0" * 64)
    finally:
        engine.dispose()


async def test_closed_postgres_port_is_unavailable_to_the_payload_driver() -> None:
    engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test")
    driver = DatabasePayloadDriver(engine)
    try:
        with pytest.raises(StoreUnavailableError):
            await driver.store(StorageDriverStoreContext(), [_payload(b'"x"')])
        with pytest.raises(StoreUnavailableError):
            await driver.retrieve(
                StorageDriverRetrieveContext(),
                [StorageDriverClaim(claim_data={"sha256": "0" * 64})],
            )
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- payloads


def _payload(data: bytes) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=data)


async def test_payload_round_trip(driver: DatabasePayloadDriver, engine: Engine) -> None:
    first = _payload(b'{"answer": "Paris"}')
    second = _payload(("\u00e9" * 5000).encode())
    claims = await driver.store(StorageDriverStoreContext(), [first, second])

    assert len(claims) == 2
    assert claims[0] != claims[1]
    for claim, payload in zip(claims, (first, second), strict=True):
        digest = hashlib.sha256(payload.SerializeToString(deterministic=True)).hexdigest()
        assert dict(claim.claim_data) == {"sha256": digest}
    assert _row_count(engine, "payloads") == 2

    got = await driver.retrieve(StorageDriverRetrieveContext(), claims)
    assert got == [first, second]
    # Order follows the claims, not the order of storing.
    assert await driver.retrieve(StorageDriverRetrieveContext(), claims[::-1]) == [second, first]


async def test_same_payload_is_stored_once(driver: DatabasePayloadDriver, engine: Engine) -> None:
    payload = _payload(b'{"same": true}')
    (first,) = await driver.store(StorageDriverStoreContext(), [payload])
    (second,) = await driver.store(StorageDriverStoreContext(), [payload])
    assert first == second
    assert _row_count(engine, "payloads") == 1

    # The same payload twice in one batch, beside a new one.
    other = _payload(b'{"same": false}')
    claims = await driver.store(StorageDriverStoreContext(), [payload, other, payload])
    assert claims[0] == claims[2] == first
    assert _row_count(engine, "payloads") == 2
    assert await driver.retrieve(StorageDriverRetrieveContext(), claims) == [
        payload,
        other,
        payload,
    ]


async def test_storing_a_payload_again_refreshes_its_age(
    driver: DatabasePayloadDriver, engine: Engine
) -> None:
    """Retention ages payloads from their latest use: a payload a new history stores again must
    not expire while that history can still be replayed."""
    payload = _payload(b'{"reused": true}')
    (claim,) = await driver.store(StorageDriverStoreContext(), [payload])
    old = datetime.now(UTC) - timedelta(days=90)
    with Session(engine) as session:
        record = session.get(PayloadRecord, claim.claim_data["sha256"])
        assert record is not None
        record.created_at = old
        session.commit()
    await driver.store(StorageDriverStoreContext(), [payload])
    with Session(engine) as session:
        record = session.get(PayloadRecord, claim.claim_data["sha256"])
        assert record is not None and record.created_at > old + timedelta(days=89)


async def test_unknown_payload_claim(driver: DatabasePayloadDriver) -> None:
    (known,) = await driver.store(StorageDriverStoreContext(), [_payload(b"1")])
    unknown = StorageDriverClaim(claim_data={"sha256": hashlib.sha256(b"nothing").hexdigest()})
    with pytest.raises(PayloadNotFoundError):
        await driver.retrieve(StorageDriverRetrieveContext(), [unknown])
    with pytest.raises(PayloadNotFoundError):
        await driver.retrieve(StorageDriverRetrieveContext(), [known, unknown])
    with pytest.raises(PayloadNotFoundError):
        await driver.retrieve(StorageDriverRetrieveContext(), [StorageDriverClaim(claim_data={})])


async def test_data_converter_stores_large_payloads_in_the_database(
    driver: DatabasePayloadDriver, engine: Engine
) -> None:
    converter = data_converter(driver, payload_threshold_bytes=1024)
    marker = "large-answer-marker "
    large = _completed("big", answer=marker * 200)
    assert len(large.model_dump_json()) > 1024

    payloads = await converter.encode([large])
    assert len(payloads) == 1
    reference = payloads[0]
    assert reference.ByteSize() < 1024
    assert marker.encode() not in reference.SerializeToString()
    assert _row_count(engine, "payloads") == 1

    (decoded,) = await converter.decode(payloads, [AgentResult])
    assert decoded == large

    # A payload under the threshold stays inline and stores nothing.
    small = _running("small")
    inline = await converter.encode([small])
    assert b'"small"' in inline[0].data
    assert _row_count(engine, "payloads") == 1
    assert await converter.decode(inline, [AgentResult]) == [small]


async def test_data_converter_fails_on_a_missing_payload(tmp_path: Path) -> None:
    """A history that names a payload another database holds cannot be decoded silently."""
    writer = make_engine(f"sqlite:///{tmp_path / 'writer.db'}")
    reader = make_engine(f"sqlite:///{tmp_path / 'reader.db'}")
    try:
        create_tables(writer)
        create_tables(reader)
        large = _completed("big", answer="x" * 4096)
        payloads = await data_converter(
            DatabasePayloadDriver(writer), payload_threshold_bytes=1024
        ).encode([large])
        with pytest.raises(PayloadNotFoundError):
            await data_converter(
                DatabasePayloadDriver(reader), payload_threshold_bytes=1024
            ).decode(payloads, [AgentResult])
    finally:
        writer.dispose()
        reader.dispose()


# --------------------------------------------------------------------------- legacy blobs


def test_read_legacy_blob(engine: Engine) -> None:
    text = "héllo wörld " * 1000
    blob_id = hashlib.sha256(text.encode()).hexdigest()
    with Session(engine) as session:
        session.add(BlobRecord(blob_id=blob_id, size_bytes=len(text.encode()), content=text))
        session.commit()

    assert read_legacy_blob(engine, blob_id) == text
    with pytest.raises(BlobNotFoundError) as info:
        read_legacy_blob(engine, "0" * 64)
    assert info.value.type is ErrorType.BLOB_NOT_FOUND
    assert not info.value.retryable


def test_payload_record_timestamps_are_utc(engine: Engine) -> None:
    with Session(engine) as session:
        session.add(PayloadRecord(sha256="a" * 64, size_bytes=1, data=b"x"))
        session.commit()
    with Session(engine) as session:
        record = session.get(PayloadRecord, "a" * 64)
        assert record is not None
        _assert_utc(record.created_at)
