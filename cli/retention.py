"""``agentflow retention run|schedule``: delete expired job records, payloads and blobs.

``run`` starts :class:`workflows.retention.RetentionWorkflow` once on a running worker and prints
what it deleted; with ``--dry-run`` it only counts what has expired, reading the job database
named by ``DATABASE_URL`` directly (no Temporal, no worker). ``schedule`` creates or updates the
Temporal Schedule that runs it every ``AGENTFLOW_RETENTION_INTERVAL_S`` (the worker does this at
start-up too).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:  # Temporal and SQLAlchemy load only when a command runs
    from sqlalchemy import Engine
    from temporalio.client import Client

    from core.retention import RetentionInput, RetentionResult
    from core.settings import Settings

retention_app = typer.Typer(
    name="retention",
    help="Delete job records, stored payloads and blobs older than the retention age.",
    no_args_is_help=True,
)
console = Console()


def _engine(settings: Settings) -> Engine:
    """The job database, once its schema is checked (exits 1 when unusable)."""
    from core.errors import StoreUnavailableError
    from infra.db import make_engine
    from infra.migrations import SchemaOutOfDateError, require_schema

    engine = make_engine(settings.database_url)
    try:
        require_schema(engine)
    except (StoreUnavailableError, SchemaOutOfDateError) as exc:
        engine.dispose()
        console.print(f"[red]✗ {exc}[/]", highlight=False)
        raise typer.Exit(1) from exc
    return engine


async def _client(settings: Settings, engine: Engine) -> Client:
    from infra.temporal import connect, plugin_from_settings, temporal_target

    try:
        return await connect(settings, plugin_from_settings(settings, engine))
    except RuntimeError as exc:
        console.print(
            f"[red]✗ cannot reach Temporal at {temporal_target(settings)}: {exc}[/]",
            highlight=False,
        )
        raise typer.Exit(1) from exc


async def _run_once(settings: Settings, engine: Engine, inp: RetentionInput) -> RetentionResult:
    from temporalio.client import WorkflowFailureError
    from temporalio.common import WorkflowIDConflictPolicy
    from temporalio.exceptions import ActivityError, WorkflowAlreadyStartedError

    from core.retention import (
        RETENTION_MANUAL_WORKFLOW_ID,
        RETENTION_WORKFLOW_NAME,
        RetentionResult,
    )

    client = await _client(settings, engine)
    try:
        # By name, as the API starts jobs: the CLI loads no workflow code.
        result: RetentionResult = await client.execute_workflow(
            RETENTION_WORKFLOW_NAME,
            inp,
            result_type=RetentionResult,
            id=RETENTION_MANUAL_WORKFLOW_ID,
            task_queue=settings.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        )
        return result
    except WorkflowAlreadyStartedError as exc:
        console.print(
            f"[red]✗ a manual retention run is already running ({RETENTION_MANUAL_WORKFLOW_ID})[/]",
            highlight=False,
        )
        raise typer.Exit(1) from exc
    except WorkflowFailureError as exc:
        cause = exc.cause.cause if isinstance(exc.cause, ActivityError) else exc.cause
        console.print(f"[red]✗ the retention run failed: {cause}[/]", highlight=False)
        raise typer.Exit(1) from exc


@retention_app.command("run")
def run(
    older_than: Annotated[
        float | None,
        typer.Option(
            "--older-than",
            help="Age in days (> 0) from which rows are deleted "
            "(default: AGENTFLOW_RETENTION_DAYS).",
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Only count the expired rows (reads the database; needs no worker)."
        ),
    ] = False,
) -> None:
    """Run retention once and print the rows deleted per table (or, dry, the rows expired)."""
    import asyncio

    from core.errors import StoreUnavailableError
    from core.retention import RetentionInput
    from core.settings import get_settings
    from infra.retention import RetentionStore

    settings = get_settings()
    days = settings.retention_days if older_than is None else older_than
    if days <= 0:
        console.print("[red]✗ --older-than must be more than 0 days[/]", highlight=False)
        raise typer.Exit(2)
    engine = _engine(settings)
    try:
        if dry_run:
            cutoff = datetime.now(UTC) - timedelta(days=days)
            try:
                rows = RetentionStore(engine).count_expired(cutoff)
            except StoreUnavailableError as exc:
                console.print(f"[red]✗ the job database is unavailable: {exc}[/]")
                raise typer.Exit(1) from exc
            console.print(
                f"Dry run: {rows.jobs} jobs, {rows.payloads} payloads and {rows.blobs} blobs "
                f"are older than {cutoff:%Y-%m-%d %H:%M:%S} UTC; nothing deleted.",
                highlight=False,
            )
            return
        inp = RetentionInput(max_age=timedelta(days=days), batch_size=settings.retention_batch_size)
        result = asyncio.run(_run_once(settings, engine, inp))
    finally:
        engine.dispose()
    console.print(
        f"Deleted {result.jobs_deleted} jobs, {result.payloads_deleted} payloads and "
        f"{result.blobs_deleted} blobs older than {result.cutoff:%Y-%m-%d %H:%M:%S} UTC "
        f"({result.batches} batches{', continued as new' if result.continued else ''}).",
        highlight=False,
    )


@retention_app.command("schedule")
def schedule() -> None:
    """Create or update the retention Schedule from the settings; print its id and interval."""
    import asyncio

    from temporalio.service import RPCError

    from core.settings import get_settings
    from infra.retention import ensure_retention_schedule

    settings = get_settings()
    engine = _engine(settings)

    async def ensure() -> str:
        return await ensure_retention_schedule(await _client(settings, engine), settings)

    try:
        schedule_id = asyncio.run(ensure())
    except RPCError as exc:
        console.print(f"[red]✗ Temporal refused the schedule: {exc}[/]", highlight=False)
        raise typer.Exit(1) from exc
    finally:
        engine.dispose()
    console.print(
        f"Schedule [bold]{schedule_id}[/]: every {settings.retention_interval_s:g} s on task "
        f"queue {settings.task_queue!r}, deleting rows older than {settings.retention_days:g} "
        f"days in batches of {settings.retention_batch_size}.",
        highlight=False,
    )
