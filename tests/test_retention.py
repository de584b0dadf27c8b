"""Retention: batches against real SQLite and PostgreSQL, the workflow on the time-skipping server,
the Schedule and the CLI on a real dev server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import Engine, event, update
from sqlmodel import Session, col, select
from temporalio.client import (
    Client,
    ScheduleActionExecutionStartWorkflow,
    ScheduleActionStartWorkflow,
    ScheduleOverlapPolicy,
)
from temporalio.exceptions import ApplicationError
from temporalio.plugin import SimplePlugin
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import Worker
from typer.testing import CliRunner

from activities.retention import RetentionActivities
from cli.retention import retention_app
from core.models import JobStatus
from core.retention import (
    RETENTION_SCHEDULE_ID,
    RETENTION_WORKFLOW_ID,
    DeleteExpiredBatchInput,
    RetentionInput,
    RetentionResult,
)
from core.settings import Settings, get_settings
from infra.db import make_engine
from infra.jobs import JobRecord
from infra.migrations import create_tables
from infra.payloads import BlobRecord, PayloadRecord
from infra.retention import ExpiredRows, RetentionStore, ensure_retention_schedule
from infra.temporal import AgentflowPlugin
from tests.helpers import find_binary, free_port
from workflows.retention import RetentionWorkflow

MAX_AGE = timedelta(days=30)
TERMINAL = [s for s in JobStatus if s.is_terminal]
UTC_MINUS_5 = timezone(timedelta(hours=-5))

# --------------------------------------------------------------------------- seeding


@dataclass
class Seeded:
    """Keys of the rows seeded: ``expired_*`` oldest first, ``kept_*`` must survive."""

    expired_jobs: list[str] = field(default_factory=list)
    kept_jobs: list[str] = field(default_factory=list)
    expired_payloads: list[str] = field(default_factory=list)
    kept_payloads: list[str] = field(default_factory=list)
    expired_blobs: list[str] = field(default_factory=list)
    kept_blobs: list[str] = field(default_factory=list)


def seed(engine: Engine, now: datetime, *, jobs: int, payloads: int, blobs: int) -> Seeded:
    """Expired rows 40 days old and older (distinct ages; their keys sort newest first, so an
    order by key alone would show), plus rows that must survive."""
    tag = uuid.uuid4().hex[:8]
    out = Seeded()

    def old(i: int, n: int) -> datetime:  # i = 0 is the oldest
        return now - MAX_AGE - timedelta(days=10, hours=n - i)

    with Session(engine) as session:
        for i in range(jobs):
            age = old(i, jobs)
            job_id = f"{tag}-old-{jobs - i:03d}"
            session.add(
                JobRecord(
                    job_id=job_id,
                    workflow_id=f"agent-{job_id}",
                    status=TERMINAL[i % len(TERMINAL)].value,
                    created_at=age - timedelta(minutes=5),
                    updated_at=age,
                    # The oldest has no completed_at: it ages by updated_at.
                    completed_at=None if i == 0 else age,
                )
            )
            out.expired_jobs.append(job_id)
        kept = [
            # Open jobs never expire, however old.
            (JobStatus.RUNNING, now - timedelta(days=100), None),
            (JobStatus.AWAITING_APPROVAL, now - timedelta(days=100), None),
            # Terminal jobs age from completion, not from creation.
            (JobStatus.COMPLETED, now - timedelta(days=60), now - timedelta(days=1)),
            (JobStatus.FAILED, now - timedelta(days=29), now - timedelta(days=29)),
        ]
        for n, (status, created, completed) in enumerate(kept):
            job_id = f"{tag}-kept-{n}"
            session.add(
                JobRecord(
                    job_id=job_id,
                    workflow_id=f"agent-{job_id}",
                    status=status.value,
                    created_at=created,
                    updated_at=completed or created,
                    completed_at=completed,
                )
            )
            out.kept_jobs.append(job_id)
        for i in range(payloads):
            key = f"{tag}-p-old-{payloads - i:03d}"
            session.add(
                PayloadRecord(sha256=key, size_bytes=1, data=b"x", created_at=old(i, payloads))
            )
            out.expired_payloads.append(key)
        for i in range(blobs):
            key = f"{tag}-b-old-{blobs - i:03d}"
            session.add(
                BlobRecord(blob_id=key, size_bytes=1, content="x", created_at=old(i, blobs))
            )
            out.expired_blobs.append(key)
        for days in (1, 29):
            key = f"{tag}-p-new-{days}"
            session.add(
                PayloadRecord(
                    sha256=key, size_bytes=1, data=b"x", created_at=now - timedelta(days=days)
                )
            )
            out.kept_payloads.append(key)
            key = f"{tag}-b-new-{days}"
            session.add(
                BlobRecord(
                    blob_id=key, size_bytes=1, content="x", created_at=now - timedelta(days=days)
                )
            )
            out.kept_blobs.append(key)
        session.commit()
    return out


def present(engine: Engine) -> tuple[set[str], set[str], set[str]]:
    """Keys of every job, payload and blob in the database."""
    with Session(engine) as session:
        return (
            set(session.exec(select(col(JobRecord.job_id))).all()),
            set(session.exec(select(col(PayloadRecord.sha256))).all()),
            set(session.exec(select(col(BlobRecord.blob_id))).all()),
        )


def kept_only(engine: Engine, seeded: Seeded) -> None:
    assert present(engine) == (
        set(seeded.kept_jobs),
        set(seeded.kept_payloads),
        set(seeded.kept_blobs),
    )


# --------------------------------------------------------------------------- fixtures

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """agentflow's tables in a SQLite file, or in a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
        create_tables(engine)
        yield engine
        engine.dispose()
        return
    url: str = request.getfixturevalue("postgres_url")
    schema = f"test_retention_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE SCHEMA "{schema}"'))
    engine = make_engine(url, connect_args={"options": f"-csearch_path={schema}"})
    try:
        create_tables(engine)
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    create_tables(engine)
    yield engine
    engine.dispose()


# --------------------------------------------------------------------------- the store


def test_batches_delete_oldest_first_and_spare_open_and_recent_rows(engine: Engine) -> None:
    now = datetime.now(UTC)
    seeded = seed(engine, now, jobs=8, payloads=7, blobs=2)
    store = RetentionStore(engine)
    cutoff = now - MAX_AGE

    assert store.count_expired(cutoff) == ExpiredRows(jobs=8, payloads=7, blobs=2)
    # A dry count deletes nothing.
    assert len(present(engine)[0]) == 8 + len(seeded.kept_jobs)

    first = store.delete_expired_batch(cutoff, 3)
    assert first == ExpiredRows(jobs=3, payloads=3, blobs=2)
    jobs, payloads, blobs = present(engine)
    assert jobs == set(seeded.expired_jobs[3:] + seeded.kept_jobs)  # the three oldest went
    assert payloads == set(seeded.expired_payloads[3:] + seeded.kept_payloads)
    assert blobs == set(seeded.kept_blobs)
    assert store.count_expired(cutoff) == ExpiredRows(jobs=5, payloads=4, blobs=0)

    batches = [first]
    while batches[-1] != ExpiredRows():
        batches.append(store.delete_expired_batch(cutoff, 3))
        assert len(batches) < 10
    assert [b.jobs for b in batches] == [3, 3, 2, 0]
    assert [b.payloads for b in batches] == [3, 3, 1, 0]
    kept_only(engine, seeded)
    assert store.count_expired(cutoff) == ExpiredRows()


def test_cutoff_in_another_zone_means_the_same_instant(engine: Engine) -> None:
    now = datetime.now(UTC)
    seeded = seed(engine, now, jobs=2, payloads=2, blobs=2)
    store = RetentionStore(engine)
    # Just after the second-oldest job's age, expressed at UTC-05:00.
    second_oldest = now - MAX_AGE - timedelta(days=10, hours=1)
    cutoff = (second_oldest + timedelta(minutes=1)).astimezone(UTC_MINUS_5)
    assert store.delete_expired_batch(cutoff, 10) == ExpiredRows(jobs=2, payloads=2, blobs=2)
    cutoff = (second_oldest - timedelta(minutes=1)).astimezone(UTC_MINUS_5)
    assert store.count_expired(cutoff) == ExpiredRows()
    kept_only(engine, seeded)


@pytest.mark.postgres
@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
def test_a_row_refreshed_between_select_and_delete_is_kept(engine: Engine) -> None:
    # PostgreSQL only: SQLite holds its write lock for the whole batch, so nothing can interleave.
    now = datetime.now(UTC)
    seeded = seed(engine, now, jobs=0, payloads=5, blobs=0)
    victim = seeded.expired_payloads[0]  # the oldest: the batch selects it

    refreshed: list[str] = []

    def refresh_victim(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("DELETE FROM payloads") and not refreshed:
            refreshed.append(victim)
            # Another connection stores the same bytes again and refreshes created_at, commits.
            with engine.begin() as other:
                other.execute(
                    update(PayloadRecord)
                    .where(col(PayloadRecord.sha256) == victim)
                    .values(created_at=now)
                )

    event.listen(engine, "before_cursor_execute", refresh_victim)
    try:
        deleted = RetentionStore(engine).delete_expired_batch(now - MAX_AGE, 3)
    finally:
        event.remove(engine, "before_cursor_execute", refresh_victim)
    assert refreshed == [victim]
    assert deleted == ExpiredRows(payloads=2)  # counts what was deleted, not what was selected
    assert present(engine)[1] == {victim, *seeded.expired_payloads[3:], *seeded.kept_payloads}


def test_bad_arguments_are_refused(sqlite_engine: Engine) -> None:
    store = RetentionStore(sqlite_engine)
    with pytest.raises(ValueError, match="naive"):
        store.delete_expired_batch(datetime(2020, 1, 1), 10)
    with pytest.raises(ValueError, match="naive"):
        store.count_expired(datetime(2020, 1, 1))
    with pytest.raises(ValueError, match="batch_size"):
        store.delete_expired_batch(datetime.now(UTC), 0)


async def test_activity_maps_an_unreachable_database_to_a_retryable_error() -> None:
    engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none")
    activities = RetentionActivities(RetentionStore(engine))
    inp = DeleteExpiredBatchInput(cutoff=datetime.now(UTC), batch_size=10)
    with pytest.raises(ApplicationError) as caught:
        await ActivityEnvironment().run(activities.delete_expired_batch, inp)
    assert caught.value.type == "StoreUnavailable"
    assert not caught.value.non_retryable
    engine.dispose()


async def test_activity_returns_the_batch_counts(sqlite_engine: Engine) -> None:
    now = datetime.now(UTC)
    seed(sqlite_engine, now, jobs=4, payloads=1, blobs=0)
    activities = RetentionActivities(RetentionStore(sqlite_engine))
    inp = DeleteExpiredBatchInput(cutoff=now - MAX_AGE, batch_size=3)
    result = await ActivityEnvironment().run(activities.delete_expired_batch, inp)
    assert (result.jobs_deleted, result.payloads_deleted, result.blobs_deleted) == (3, 1, 0)
    assert result.largest == 3


# --------------------------------------------------------------------------- the workflow


def retention_worker(client: Client, engine: Engine, task_queue: str) -> Worker:
    """A worker with the retention activity on ``engine``; the workflow comes from the agentflow
    plugin when it registers it (registering it twice is an error), else it is added here."""
    from_plugins = [
        w
        for p in client.config()["plugins"]
        if isinstance(p, SimplePlugin) and isinstance(p.workflows, Sequence)
        for w in p.workflows
    ]
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[] if RetentionWorkflow in from_plugins else [RetentionWorkflow],
        activities=RetentionActivities(RetentionStore(engine)).all(),
    )


@pytest.mark.parametrize("max_batches", [1000, 2], ids=["one-run", "continue-as-new"])
async def test_workflow_deletes_every_expired_row_in_batches(
    env: WorkflowEnvironment, sqlite_engine: Engine, max_batches: int
) -> None:
    # The session's time-skipping clock may be ahead of the wall clock (other tests skip time).
    now = await env.get_current_time()
    seeded = seed(sqlite_engine, now, jobs=10, payloads=9, blobs=4)
    task_queue = f"retention-{uuid.uuid4()}"
    inp = RetentionInput(max_age=MAX_AGE, batch_size=3, max_batches=max_batches)
    async with retention_worker(env.client, sqlite_engine, task_queue):
        handle = await env.client.start_workflow(
            RetentionWorkflow.run, inp, id=f"retention-{uuid.uuid4()}", task_queue=task_queue
        )
        result = await handle.result()
        # The last run's start names the run it continued (the chain's previous run), if any.
        last_start = (await env.client.get_workflow_handle(handle.id).fetch_history()).events[0]
        continued_from = (
            last_start.workflow_execution_started_event_attributes.continued_execution_run_id
        )

    # jobs 3+3+3+1, payloads 3+3+3+0, blobs 3+1+0+0: the fourth batch is below 3 everywhere.
    assert (result.jobs_deleted, result.payloads_deleted, result.blobs_deleted) == (10, 9, 4)
    assert result.batches == 4
    assert (
        now - MAX_AGE - timedelta(minutes=5) <= result.cutoff <= now - MAX_AGE + timedelta(hours=1)
    )
    kept_only(sqlite_engine, seeded)
    if max_batches == 2:
        assert result.continued
        # Two runs of two batches each: the last one continued the first.
        assert continued_from == handle.first_execution_run_id
    else:
        assert not result.continued
        assert continued_from == ""


async def test_workflow_with_nothing_expired_makes_one_batch(
    env: WorkflowEnvironment, sqlite_engine: Engine
) -> None:
    task_queue = f"retention-{uuid.uuid4()}"
    inp = RetentionInput(max_age=MAX_AGE, batch_size=500)
    async with retention_worker(env.client, sqlite_engine, task_queue):
        result = await env.client.execute_workflow(
            RetentionWorkflow.run, inp, id=f"retention-{uuid.uuid4()}", task_queue=task_queue
        )
    assert result.model_dump(exclude={"cutoff"}) == RetentionResult(
        cutoff=result.cutoff, batches=1
    ).model_dump(exclude={"cutoff"})


# --------------------------------------------------------------------------- schedule and CLI


@pytest.fixture
async def own_dev_env(plugin: AgentflowPlugin) -> AsyncIterator[WorkflowEnvironment]:
    """A dev server of the test's own.

    The retention schedule has one fixed id per namespace, and every ``python worker.py``
    re-points it at its own task queue when it starts: on the session's shared dev server a
    worker process started by another module (the crash tests) could take this module's
    scheduled runs, and the test would wait for them forever.
    """
    environment = await WorkflowEnvironment.start_local(
        plugins=[plugin],
        dev_server_existing_path=find_binary("temporal"),
        port=free_port(),
        ui=False,
    )
    async with environment:
        yield environment


@pytest.fixture
def cli_env(
    monkeypatch: pytest.MonkeyPatch, own_dev_env: WorkflowEnvironment, tmp_path: Path
) -> Iterator[dict[str, str]]:
    """Environment for the CLI: a SQLite job database, the dev server, a fresh task queue."""
    values = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.db'}",
        "TEMPORAL_ADDRESS": own_dev_env.client.service_client.config.target_host,
        "AGENTFLOW_TASK_QUEUE": f"retention-{uuid.uuid4()}",
        "AGENTFLOW_RETENTION_BATCH_SIZE": "3",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield values
    get_settings.cache_clear()


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(retention_app, list(args))
    return result.exit_code, result.output


@pytest.mark.devserver
async def test_cli_dry_run_counts_and_run_deletes(
    own_dev_env: WorkflowEnvironment, cli_env: dict[str, str]
) -> None:
    engine = make_engine(cli_env["DATABASE_URL"])
    create_tables(engine)
    seeded = seed(engine, datetime.now(UTC), jobs=5, payloads=4, blobs=0)

    code, output = invoke("run", "--older-than", "0")
    assert code == 2, output
    code, output = invoke("run", "--dry-run")
    assert code == 0, output
    assert "5 jobs, 4 payloads and 0 blobs" in " ".join(output.split())
    assert len(present(engine)[0]) == 5 + len(seeded.kept_jobs)

    async with retention_worker(own_dev_env.client, engine, cli_env["AGENTFLOW_TASK_QUEUE"]):
        # The CLI runs its own event loop (asyncio.run), so it runs in a thread.
        code, output = await asyncio.to_thread(invoke, "run", "--older-than", "30")
    assert code == 0, output
    assert "Deleted 5 jobs, 4 payloads and 0 blobs" in " ".join(output.split())
    assert "(2 batches)" in " ".join(output.split())
    kept_only(engine, seeded)
    engine.dispose()


@pytest.mark.devserver
async def test_schedule_is_created_updated_and_its_run_deletes(
    own_dev_env: WorkflowEnvironment, cli_env: dict[str, str]
) -> None:
    client = own_dev_env.client
    engine = make_engine(cli_env["DATABASE_URL"])
    create_tables(engine)
    seeded = seed(engine, datetime.now(UTC), jobs=4, payloads=2, blobs=7)
    settings = Settings()  # from cli_env
    handle = client.get_schedule_handle(RETENTION_SCHEDULE_ID)
    try:
        assert await ensure_retention_schedule(client, settings) == RETENTION_SCHEDULE_ID
        described = await handle.describe()
        assert [i.every for i in described.schedule.spec.intervals] == [timedelta(hours=1)]
        assert described.schedule.policy.overlap == ScheduleOverlapPolicy.SKIP
        action = described.schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow)
        assert (action.workflow, action.id, action.task_queue) == (
            "RetentionWorkflow",
            RETENTION_WORKFLOW_ID,
            settings.task_queue,
        )

        # A second ensure (through the CLI) updates it and keeps an operator's pause.
        await handle.pause(note="maintenance")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AGENTFLOW_RETENTION_INTERVAL_S", "7200")
            get_settings.cache_clear()
            code, output = await asyncio.to_thread(invoke, "schedule")
            get_settings.cache_clear()
        assert code == 0, output
        assert RETENTION_SCHEDULE_ID in output and "every 7200 s" in output
        described = await handle.describe()
        assert [i.every for i in described.schedule.spec.intervals] == [timedelta(hours=2)]
        assert described.schedule.state.paused
        assert described.schedule.state.note == "maintenance"
        await handle.unpause()

        async with retention_worker(client, engine, settings.task_queue):
            await handle.trigger()
            results = await scheduled_results(client, handle_id=RETENTION_SCHEDULE_ID)
    finally:
        await handle.delete()
        engine.dispose()
    totals = (
        sum(r.jobs_deleted for r in results),
        sum(r.payloads_deleted for r in results),
        sum(r.blobs_deleted for r in results),
    )
    assert totals == (4, 2, 7)
    kept_only(engine, seeded)


async def scheduled_results(client: Client, *, handle_id: str) -> list[RetentionResult]:
    """Results of the schedule's runs once at least one has started (waits up to 10 s)."""
    handle = client.get_schedule_handle(handle_id)
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        info = (await handle.describe()).info
        if info.recent_actions:
            break
        assert asyncio.get_running_loop().time() < deadline, "the schedule never ran"
        await asyncio.sleep(0.1)
    results = []
    for recent in info.recent_actions:
        execution = recent.action
        assert isinstance(execution, ScheduleActionExecutionStartWorkflow)
        assert execution.workflow_id.startswith(RETENTION_WORKFLOW_ID)
        run = client.get_workflow_handle_for(RetentionWorkflow.run, execution.workflow_id)
        results.append(await run.result())
    return results
