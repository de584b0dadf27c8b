"""The ``agentflow`` command line (a Typer app; console script ``agentflow = cli.main:app``).

Commands:

* ``agentflow dev``: Temporal, Redis, the worker and the API as child processes, optionally
  running a requests file against them (see :mod:`cli.devstack`);
* ``agentflow run FILE``: submit a JSONL file of requests to a running API and summarize
  (see :mod:`cli.runner`);
* ``agentflow submit "question" [--follow]``: submit one request, optionally printing its events
  live (see :mod:`cli.follow`);
* ``agentflow worker`` and ``agentflow api``: one piece each, configured from the environment;
* ``agentflow keys create|list|revoke``: API keys (see :mod:`cli.keys`);
* ``agentflow retention run|schedule``: delete old job records and payloads now, or create the
  Temporal Schedule that does it (see :mod:`cli.retention`);
* ``agentflow db upgrade|current|revision``: the job database's migrations (see :mod:`cli.db`).

Each command imports what it uses when it runs (this module and the sub-apps' modules import
typer and little else), so ``agentflow --help`` answers in a fraction of a second and a command
pays only for its own dependencies.
"""

from __future__ import annotations

import signal
from functools import cache
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer

from cli.db import db_app
from cli.keys import keys_app
from cli.retention import retention_app
from cli.router import router_app

if TYPE_CHECKING:
    from rich.console import Console

    from cli.devstack.stack import DevStack

app = typer.Typer(
    name="agentflow",
    help="Durable LLM agent requests on Temporal: dev stack, batch runs, worker and API.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_show_locals=False,  # locals would print settings, API keys included
)
app.add_typer(keys_app)
app.add_typer(router_app)
app.add_typer(retention_app)
app.add_typer(db_app)

ApproveOpt = Annotated[
    bool,
    typer.Option(
        "--approve/--no-approve",
        help="Answer approvals (per line's expect_approval, approve by default); "
        "--no-approve leaves such jobs waiting.",
    ),
]
ConcurrencyOpt = Annotated[
    int, typer.Option("--concurrency", min=1, max=1000, help="Most requests in flight at once.")
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="AGENTFLOW_API_KEY",
        show_envvar=True,
        help="API key for the agentflow API (needs submit, read and approve); it is the "
        "reviewer of the approvals sent.",
    ),
]
TimeoutOpt = Annotated[
    float,
    typer.Option("--timeout", min=1, help="Seconds each request may take to reach an end."),
]


@cache
def _console() -> Console:
    from rich.console import Console

    return Console()


def _interrupt_on_sigterm() -> None:
    """Treat SIGTERM like Ctrl-C, so both stop the stack through the same cleanup path.

    SIGTERM is handed to the current SIGINT handler (Python's, or the one ``asyncio.run``
    installs, which cancels the main task); when SIGINT is ignored (a background job of a
    non-interactive shell), KeyboardInterrupt is raised directly.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        on_sigint = signal.getsignal(signal.SIGINT)
        if not callable(on_sigint):
            raise KeyboardInterrupt
        on_sigint(signal.SIGINT, frame)

    signal.signal(signal.SIGTERM, handler)


@app.command()
def dev(
    run: Annotated[
        Path | None,
        typer.Option(
            "--run",
            exists=True,
            dir_okay=False,
            readable=True,
            help="JSONL requests file to run once the stack is up.",
        ),
    ] = None,
    approve: ApproveOpt = True,
    concurrency: ConcurrencyOpt = 8,
    exit_after_run: Annotated[
        bool, typer.Option("--exit-after-run", help="Stop the stack once --run finished.")
    ] = False,
    out: Annotated[
        Path, typer.Option("--out", help="Where --run writes one JSON line per request.")
    ] = Path("results.jsonl"),
    temporal_port: Annotated[
        int, typer.Option("--temporal-port", help="gRPC port of the Temporal dev server.")
    ] = 7233,
    ui_port: Annotated[int, typer.Option("--ui-port", help="Port of the Temporal Web UI.")] = 8233,
    api_port: Annotated[int, typer.Option("--api-port", help="Port of the REST API.")] = 8000,
    site_port: Annotated[
        int,
        typer.Option(
            "--site-port",
            help="Port of the example site that the http_get example requests fetch "
            "(examples/requests.jsonl names 8088).",
        ),
    ] = 8088,
) -> None:
    """Start Temporal, Redis, the worker and the API locally; Ctrl-C stops them all.

    Reuses a Temporal server named by TEMPORAL_ADDRESS (or already on --temporal-port) and the
    Redis named by REDIS_URL (or at 127.0.0.1:6379); otherwise starts its own. State and logs go
    to AGENTFLOW_DATA_DIR (default: data/ in the checkout).
    """
    from cli.devstack.stack import DevStack
    from cli.devstack.supervisor import DevStackError
    from cli.runner import RunOptions, run_file
    from core.settings import get_settings

    console = _console()
    _interrupt_on_sigterm()
    settings = get_settings()
    stack = DevStack(
        settings=settings,
        temporal_port=temporal_port,
        ui_port=ui_port,
        api_port=api_port,
        site_port=site_port,
        console=console,
    )
    code = 0
    with stack:  # leaving the block stops every child, whatever happened
        try:
            stack.start()
            _print_urls(stack)
            if run is not None:
                options = RunOptions(
                    api_url=stack.api_url,
                    concurrency=concurrency,
                    approve=approve,
                    api_key=stack.api_key,
                )
                code = run_file(run, options, out, console)
                stack.check()
            if run is not None and exit_after_run:
                console.print("Run finished; stopping the stack")
            else:
                console.print(
                    f"[bold green]Stack is up[/]; inspect runs at {stack.temporal_ui_url}; "
                    "Ctrl-C to stop"
                )
                stack.wait_forever()
        except KeyboardInterrupt:
            console.print("Interrupted; stopping the stack")
        except DevStackError as exc:  # ChildExitedError included: its message has the log tail
            console.print(f"[red]✗ {exc}[/]", highlight=False)
            console.print("Stopping the stack")
            code = 1
    raise typer.Exit(code)


def _print_urls(stack: DevStack) -> None:
    from rich.table import Table

    table = Table(show_header=False, title="agentflow dev stack", title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("where")
    table.add_row("API", stack.api_url)
    table.add_row("API docs", f"{stack.api_url}/docs")
    table.add_row("Temporal Web UI", stack.temporal_ui_url)
    table.add_row("Temporal gRPC", stack.temporal_address)
    table.add_row("Redis", stack.redis_url)
    table.add_row("Job database", stack.database_url)
    table.add_row("Logs", str(stack.log_dir))
    _console().print(table)


@app.command("run")
def run_command(
    file: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, readable=True, help="JSONL requests file."),
    ],
    api: Annotated[str, typer.Option("--api", help="Base URL of the agentflow API.")] = (
        "http://127.0.0.1:8000"
    ),
    out: Annotated[
        Path, typer.Option("--out", help="Where to write one JSON line per request.")
    ] = Path("results.jsonl"),
    concurrency: ConcurrencyOpt = 8,
    approve: ApproveOpt = True,
    api_key: ApiKeyOpt = None,
    timeout: TimeoutOpt = 600.0,
) -> None:
    """Submit every line of FILE to the API, wait for each job, write results, summarize.

    Exits 0 when every request ended as expected (COMPLETED; REJECTED when its line says
    "expect_approval": "reject"; AWAITING_APPROVAL with --no-approve), 1 otherwise.
    """
    from cli.runner import RunOptions, run_file

    options = RunOptions(
        api_url=api.rstrip("/"),
        concurrency=concurrency,
        approve=approve,
        api_key=api_key,
        timeout_s=timeout,
    )
    raise typer.Exit(run_file(file, options, out, _console()))


@app.command("submit")
def submit_command(
    question: Annotated[str, typer.Argument(help="The question to ask.")],
    tool: Annotated[
        list[str] | None,
        typer.Option(
            "--tool",
            help='A tool call, NAME:JSON, e.g. --tool \'calculator:{"expression": "2+2"}\' '
            "(repeatable; ids t1, t2, ...).",
        ),
    ] = None,
    require_approval: Annotated[
        bool, typer.Option("--require-approval", help="Wait for a reviewer before the tools.")
    ] = False,
    tier: Annotated[
        str,
        typer.Option("--tier", help="Model tier: auto, small, medium or large."),
    ] = "auto",
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", help="Print the job's events live until it ends, then the answer."
        ),
    ] = False,
    api: Annotated[str, typer.Option("--api", help="Base URL of the agentflow API.")] = (
        "http://127.0.0.1:8000"
    ),
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="AGENTFLOW_API_KEY",
            show_envvar=True,
            help="API key for the agentflow API (needs submit, and read for --follow).",
        ),
    ] = None,
) -> None:
    """Submit one question; print its job id, or with --follow its events as they happen.

    Exits 0 when the API accepted the job (with --follow: when the job COMPLETED), 1 otherwise.
    """
    import asyncio

    from cli.follow import SubmitOptions, parse_tool_option, submit

    if tier not in ("auto", "small", "medium", "large"):
        raise typer.BadParameter("one of auto, small, medium, large", param_hint="--tier")
    try:
        calls = [parse_tool_option(text, i) for i, text in enumerate(tool or [], start=1)]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--tool") from None
    body = {
        "query": question,
        "tool_calls": calls,
        "model_tier": tier,
        "require_approval": require_approval,
    }
    options = SubmitOptions(api_url=api.rstrip("/"), api_key=api_key, follow=follow)
    raise typer.Exit(asyncio.run(submit(body, options, _console())))


@app.command()
def worker() -> None:
    """Run the worker (the same as ``python worker.py``), configured from the environment."""
    import worker as worker_module

    try:
        worker_module.main()
    except (RuntimeError, ValueError) as exc:  # Temporal unreachable, bad config, old schema
        _console().print(f"[red]✗ the worker stopped: {exc}[/]", highlight=False)
        raise typer.Exit(1) from exc


@app.command()
def api() -> None:
    """Run the REST API with uvicorn on AGENTFLOW_API_HOST:AGENTFLOW_API_PORT."""
    import uvicorn

    from cli.devstack.supervisor import SHUTDOWN_GRACE_S
    from core.settings import get_settings

    settings = get_settings()
    # Open event streams (SSE) must not hold a shutdown: clients resume with Last-Event-ID.
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=settings.api_host,
        port=settings.api_port,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )


if __name__ == "__main__":
    app()
