"""``agentflow keys create|list|revoke``: manage API keys in the job database.

The commands talk to the database named by ``DATABASE_URL`` directly (the API need not run),
hash new keys with ``AGENTFLOW_API_KEY_PEPPER`` like the API does, and print a new key's secret
exactly once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:  # pydantic, SQLAlchemy and the store load only when a command runs
    from rich.console import Console

    from core.auth import Scope
    from infra.keys import KeyStore

keys_app = typer.Typer(
    name="keys",
    help="Create, list and revoke API keys (stored hashed in the job database).",
    no_args_is_help=True,
)


def _console() -> Console:
    from rich.console import Console

    return Console()


def _scopes(values: list[str]) -> list[Scope]:
    """``--scope`` values as scopes (typer's enum choices would import pydantic for ``--help``).

    Raises:
        typer.BadParameter: a value names no scope.
    """
    from core.auth import Scope

    try:
        return [Scope(value) for value in values]
    except ValueError:
        names = ", ".join(scope.value for scope in Scope)
        raise typer.BadParameter(f"scopes are {names}", param_hint="--scope") from None


def _store() -> KeyStore:
    """The key store on ``DATABASE_URL``, once its schema is checked (exits 1 when unusable)."""
    from core.errors import StoreUnavailableError
    from core.settings import get_settings
    from infra.db import make_engine
    from infra.keys import KeyStore
    from infra.migrations import SchemaOutOfDateError, require_schema

    settings = get_settings()
    engine = make_engine(settings.database_url)
    try:
        require_schema(engine)
    except (StoreUnavailableError, SchemaOutOfDateError) as exc:
        engine.dispose()
        _console().print(f"[red]✗ {exc}[/]", highlight=False)
        raise typer.Exit(1) from exc
    return KeyStore.from_settings(engine, settings)


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="What the key is for (shown as its reviewer name).")],
    scope: Annotated[
        list[str],
        typer.Option(
            "--scope",
            "-s",
            metavar="[submit|read|approve|admin]",
            help="A scope to grant; repeat for several (submit, read, approve, admin).",
        ),
    ],
    rate_limit: Annotated[
        int | None,
        typer.Option("--rate-limit", min=1, help="Requests per minute (default: the server's)."),
    ] = None,
    budget: Annotated[
        float | None,
        typer.Option("--budget-usd", min=0, help="Daily budget in USD (default: the server's)."),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only the key (for scripts).")
    ] = False,
) -> None:
    """Create a key and print it once; only its digest is stored."""
    scopes = _scopes(scope)
    created = _store().create(
        name, scopes, rate_limit_per_minute=rate_limit, daily_budget_usd=budget
    )
    if quiet:
        typer.echo(created.secret)
        return
    console = _console()
    console.print(f"Created key [bold]{created.key_id}[/] ({name}): {', '.join(scope)}")
    console.print("Store it now; it is not shown again:")
    typer.echo(created.secret)


@keys_app.command("list")
def list_keys(
    all_keys: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
) -> None:
    """List keys (ids, names, scopes, limits), never their secrets."""
    from rich.table import Table

    table = Table()
    table.add_column("key id", no_wrap=True)
    for column in ("name", "scopes", "req/min", "USD/day", "created", "revoked"):
        table.add_column(column)
    for key in _store().list_keys(include_revoked=all_keys):
        table.add_row(
            key.key_id,
            key.name,
            key.scopes,
            str(key.rate_limit_per_minute or "default"),
            "default" if key.daily_budget_usd is None else f"{key.daily_budget_usd:g}",
            key.created_at.strftime("%Y-%m-%d %H:%M"),
            key.revoked_at.strftime("%Y-%m-%d %H:%M") if key.revoked_at else "",
        )
    _console().print(table)


@keys_app.command("revoke")
def revoke(key_id: Annotated[str, typer.Argument(help="The key id (af_...).")]) -> None:
    """Revoke a key: it authenticates nothing from now on."""
    if not _store().revoke(key_id):
        _console().print(f"[red]✗ no active key {key_id}[/]", highlight=False)
        raise typer.Exit(1)
    _console().print(f"Revoked {key_id}")
