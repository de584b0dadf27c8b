"""JobStore against real SQLite and real PostgreSQL (a throwaway schema per test)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, timedelta
from pathlib import Path

import pytest
import sqlalchemy
from activities.store import (
    IdempotencyConflictError,
    JobRecord,
    JobStore,
    StoreUnavailableError,
    create_tables,
    make_engine,
    request_hash,
)

from core.errors import BlobNotFoundError, ErrorType
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
from tests.helpers import free_port


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'nested' / 'jobs.db'}")
        create_tables(engine)
        yield JobStore(engine)
        engine.dispose()
        return
    url: str = request.getfixturevalue("postgres_url")
    schema = f"test_store_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE SCHEMA "{schema}"'))
    engine = make_engine(url, connect_args={"options": f"-csearch_path={schema}"})
    try:
        create_tables(engine)
        yield JobStore(engine)
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


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
    from datetime import datetime

    assert isinstance(value, datetime)
    assert value.tzinfo is not None
    assert value.utcoffset() == timedelta(0)


# --------------------------------------------------------------------------- jobs


def test_create_and_get(store: JobStore) -> None:
    request = _request()
    created = store.create_job("j1", "agent-j1", request, "key-1")
    assert created.status == JobStatus.RUNNING

    got = store.get_job("j1")
    assert got is not None
    assert got.workflow_id == "agent-j1"
    assert got.status == JobStatus.RUNNING.value
    assert got.query == request.query
    assert got.to_request() == request
    assert got.to_result() is None
    assert got.idempotency_key == "key-1"
    assert got.request_hash == request_hash(request)
    assert got.cost_usd == 0.0
    assert got.completed_at is None
    assert got.duration_ms is None
    _assert_utc(got.created_at)
    _assert_utc(got.updated_at)
    assert store.get_job("missing") is None


def test_request_hash_is_canonical() -> None:
    a = AgentRequest(query="q", metadata={"a": 1, "b": 2})
    b = AgentRequest(query="q", metadata={"b": 2, "a": 1})
    assert request_hash(a) == request_hash(b)
    assert request_hash(a) != request_hash(AgentRequest(query="q2"))
    assert len(request_hash(a)) == 64


def test_list_filters_and_orders_newest_first(store: JobStore) -> None:
    for i in range(5):
        store.create_job(f"j{i}", f"agent-j{i}", _request(f"q{i}"), None)
    store.record_result(_completed("j1"))
    store.record_result(_completed("j3", status=JobStatus.FAILED, answer=None, error="boom"))

    assert [r.job_id for r in store.list_jobs()] == ["j4", "j3", "j2", "j1", "j0"]
    assert [r.job_id for r in store.list_jobs(JobStatus.RUNNING)] == ["j4", "j2", "j0"]
    assert [r.job_id for r in store.list_jobs(JobStatus.COMPLETED)] == ["j1"]
    assert [r.job_id for r in store.list_jobs(JobStatus.FAILED)] == ["j3"]
    assert store.list_jobs(JobStatus.CANCELED) == []
    assert [r.job_id for r in store.list_jobs(limit=2)] == ["j4", "j3"]
    assert [r.job_id for r in store.list_jobs(limit=2, offset=2)] == ["j2", "j1"]


def test_idempotency_conflict(store: JobStore) -> None:
    store.create_job("first", "agent-first", _request(), "same-key")
    with pytest.raises(IdempotencyConflictError) as info:
        store.create_job("second", "agent-second", _request(), "same-key")
    assert info.value.existing_job_id == "first"
    assert store.get_job("second") is None
    found = store.find_by_idempotency_key("same-key")
    assert found is not None and found.job_id == "first"
    assert store.find_by_idempotency_key("other-key") is None
    # Jobs without a key never conflict with each other.
    store.create_job("a", "agent-a", _request(), None)
    store.create_job("b", "agent-b", _request(), None)


def test_duplicate_job_id_is_value_error(store: JobStore) -> None:
    store.create_job("dup", "agent-dup", _request(), None)
    with pytest.raises(ValueError, match="already exists"):
        store.create_job("dup", "agent-dup", _request(), None)


@pytest.mark.parametrize("round_", range(5))
def test_racing_creates_with_same_key_exactly_one_wins(store: JobStore, round_: int) -> None:
    workers = 4
    barrier = threading.Barrier(workers)
    winners: list[str] = []
    conflicts: list[str] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def submit(i: int) -> None:
        job_id = f"race-{round_}-{i}"
        barrier.wait()
        try:
            store.create_job(job_id, f"agent-{job_id}", _request(), f"race-key-{round_}")
        except IdempotencyConflictError as exc:
            with lock:
                conflicts.append(exc.existing_job_id)
        except BaseException as exc:
            with lock:
                failures.append(exc)
        else:
            with lock:
                winners.append(job_id)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)

    assert failures == []
    assert len(winners) == 1
    assert conflicts == winners * (workers - 1)
    assert [r.job_id for r in store.list_jobs()] == winners


def test_delete_job(store: JobStore) -> None:
    store.create_job("gone", "agent-gone", _request(), "k-gone")
    store.delete_job("gone")
    assert store.get_job("gone") is None
    # The key is free again: a failed submit changes nothing.
    store.create_job("again", "agent-again", _request(), "k-gone")
    store.delete_job("never-existed")


# --------------------------------------------------------------------------- results


def test_record_result_sets_totals_and_completion(store: JobStore) -> None:
    created = store.create_job("r1", "agent-r1", _request(), None)
    result = _completed("r1", response_cache_hit=False)
    record = store.record_result(result)

    assert record.status == JobStatus.COMPLETED.value
    assert record.tier == Tier.SMALL.value
    assert record.cost_usd == pytest.approx(0.003)
    assert record.prompt_tokens == 400
    assert record.completion_tokens == 60
    assert record.error is None
    assert record.to_result() == result

    stored = store.get_job("r1")
    assert stored is not None
    assert stored.to_result() == result
    assert stored.to_request() == _request()
    assert stored.created_at == created.created_at
    _assert_utc(stored.completed_at)
    _assert_utc(stored.updated_at)
    assert stored.completed_at is not None
    assert stored.completed_at >= stored.created_at
    assert stored.duration_ms == pytest.approx(
        (stored.completed_at - stored.created_at).total_seconds() * 1000
    )


def test_record_result_twice_is_idempotent(store: JobStore) -> None:
    store.create_job("r2", "agent-r2", _request(), None)
    result = _completed("r2")
    store.record_result(result)
    first = store.get_job("r2")
    store.record_result(result)
    second = store.get_job("r2")
    assert first is not None and second is not None
    assert first.model_dump() == second.model_dump()
    assert len(store.list_jobs()) == 1


def test_record_progress_then_terminal(store: JobStore) -> None:
    store.create_job("r3", "agent-r3", _request(), None)
    waiting = store.record_result(AgentResult(job_id="r3", status=JobStatus.AWAITING_APPROVAL))
    assert waiting.status == JobStatus.AWAITING_APPROVAL.value
    assert waiting.completed_at is None
    assert waiting.duration_ms is None
    assert waiting.tier is None

    escalated = _completed("r3", escalated_to=Tier.MEDIUM, response_cache_hit=True)
    done = store.record_result(escalated)
    assert done.tier == Tier.MEDIUM.value
    assert done.response_cache_hit is True
    assert done.completed_at is not None
    assert [r.job_id for r in store.list_jobs(JobStatus.AWAITING_APPROVAL)] == []


def test_record_result_for_unknown_job_creates_it(store: JobStore) -> None:
    result = _completed("direct", status=JobStatus.FAILED, answer=None, error="model down")
    record = store.record_result(result)
    assert record.job_id == "direct"
    assert record.workflow_id == "agent-direct"
    assert record.status == JobStatus.FAILED.value
    assert record.error == "model down"
    assert record.request_json is None
    assert record.to_request() is None

    stored = store.get_job("direct")
    assert stored is not None
    assert stored.to_result() == result
    assert stored.duration_ms is not None and stored.duration_ms >= 0
    _assert_utc(stored.created_at)
    assert store.record_result(result).model_dump() == stored.model_dump()


# --------------------------------------------------------------------------- blobs


def test_blob_roundtrip_is_content_addressed(store: JobStore) -> None:
    text = "héllo wörld " * 1000
    ref = store.put_blob(text)
    assert len(ref.blob_id) == 64
    assert ref.size_bytes == len(text.encode("utf-8"))
    assert ref.preview == text[:200]
    assert store.get_blob(ref.blob_id) == text
    assert store.put_blob(text) == ref
    assert store.put_blob("other").blob_id != ref.blob_id


def test_missing_blob(store: JobStore) -> None:
    with pytest.raises(BlobNotFoundError) as info:
        store.get_blob("0" * 64)
    assert info.value.type is ErrorType.BLOB_NOT_FOUND
    assert not info.value.retryable


def test_ping(store: JobStore) -> None:
    store.ping()


def test_job_record_is_tz_aware_even_when_built_in_python() -> None:
    record = JobRecord(job_id="x", workflow_id="agent-x", status="RUNNING")
    assert record.created_at.tzinfo is UTC


# --------------------------------------------------------------------------- unavailable


def test_store_unavailable_on_closed_port() -> None:
    engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test")
    store = JobStore(engine)
    with pytest.raises(StoreUnavailableError) as info:
        store.ping()
    assert info.value.type is ErrorType.STORE_UNAVAILABLE
    assert info.value.retryable
    with pytest.raises(StoreUnavailableError):
        create_tables(engine)
    with pytest.raises(StoreUnavailableError):
        store.get_job("x")
    with pytest.raises(StoreUnavailableError):
        store.create_job("x", "agent-x", _request(), "k")
    with pytest.raises(StoreUnavailableError):
        store.record_result(_completed("x"))
    with pytest.raises(StoreUnavailableError):
        store.put_blob("text")
    engine.dispose()


def test_sqlite_pragmas(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'a' / 'b' / 'db.sqlite'}")
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(sqlalchemy.text("PRAGMA busy_timeout")).scalar() == 5000
    engine.dispose()


def test_unsupported_url() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        make_engine("mysql://localhost/db")


def test_create_tables_survives_a_concurrent_creator(tmp_path: Path) -> None:
    """Worker and API create tables at the same time on a fresh database: both succeed."""
    import threading

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

    for _ in range(5):
        (tmp_path / "race.db").unlink(missing_ok=True)
        threads = [threading.Thread(target=create) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
