"""``agentflow keys create|list|revoke``: manage API keys in the job database.

The commands talk to the database named by ``DATABASE_URL`` directly (the API need not run),
hash new keys with ``AGENTFLOW_API_KEY_PEPPER`` like the API does, and print a new key's secret
exactly once.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from core.auth import Scope
from core.errors import StoreUnavailableError
from core.settings import get_settings
from infra.db import make_engine
from infra.keys import KeyStore

keys_app = typer.Typer(
    name="keys",
    help="Create, list and revoke API keys (stored hashed in the job database).",
    no_args_is_help=True,
)
console = Console()


def _store() -> KeyStore:
    from infra.migrations import create_tables  # Alembic: only for commands that use it

    settings = get_settings()
    engine = make_engine(settings.database_url)
    try:
        create_tables(engine)
    except StoreUnavailableError as exc:
        console.print(f"[red]✗ the job database is unavailable: {exc}[/]", highlight=False)
        raise typer.Exit(1) from exc
    return KeyStore.from_settings(engine, settings)


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="What the key is for (shown as its reviewer name).")],
    scope: Annotated[
        list[Scope],
        typer.Option(
            "--scope",
            "-s",
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
    created = _store().create(
        name, scope, rate_limit_per_minute=rate_limit, daily_budget_usd=budget
    )
    if quiet:
        typer.echo(created.secret)
        return
    console.print(f"Created key [bold]{created.key_id}[/] ({name}): {', '.join(scope)}")
    console.print("Store it now; it is not shown again:")
    typer.echo(created.secret)


@keys_app.command("list")
def list_keys(
    all_keys: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
) -> None:
    """List keys (ids, names, scopes, limits), never their secrets."""
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
    console.print(table)


@keys_app.command("revoke")
def revoke(key_id: Annotated[str, typer.Argument(help="The key id (af_...).")]) -> None:
    """Revoke a key: it authenticates nothing from now on."""
    if not _store().revoke(key_id):
        console.print(f"[red]✗ no active key {key_id}[/]", highlight=False)
        raise typer.Exit(1)
    console.print(f"Revoked {key_id}")
