"""Alembic's environment: runs the revisions in ``versions/`` against the job database.

:mod:`infra.migrations` passes an open connection in ``config.attributes["connection"]``, inside
the lock that serializes concurrent upgrades; the transaction is the caller's. Without one (a
bare ``alembic`` command line), the database is ``sqlalchemy.url`` or the settings'
``DATABASE_URL``.
"""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import Connection
from sqlmodel.sql.sqltypes import AutoString

from infra.db import UTCDateTime, make_engine
from infra.migrations import target_metadata


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Render model column types as plain SQLAlchemy types in new revisions.

    A revision must not import the models' modules (they change after it is written), so
    :class:`infra.db.UTCDateTime` becomes ``sa.DateTime(timezone=True)`` (the same DDL) and
    sqlmodel's ``AutoString`` becomes ``sa.String``.
    """
    if type_ == "type":
        if isinstance(obj, UTCDateTime):
            return "sa.DateTime(timezone=True)"
        if isinstance(obj, AutoString):
            return f"sa.String(length={obj.length})" if obj.length else "sa.String()"
    return False


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=target_metadata(),
        render_item=render_item,
        compare_type=True,
        compare_server_default=True,
        # SQLite alters most things by copying the table; batch mode writes those revisions.
        render_as_batch=True,
        **kwargs,
    )


def _run_on(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


def run() -> None:
    """Run the requested command online (on a connection) or offline (``--sql``)."""
    config = context.config
    if context.is_offline_mode():
        _configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    connection: Connection | None = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        from core.settings import get_settings

        url = get_settings().database_url
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            _run_on(conn)
            conn.commit()
    finally:
        engine.dispose()


run()
