"""The built-in tools and the registry that holds them.

| tool                 | module                          | approval | cache TTL |
|----------------------|---------------------------------|----------|-----------|
| ``calculator``       | :mod:`infra.tools.calculator`  | no       | 1 day     |
| ``python_docs_search`` | :mod:`infra.tools.python_docs` | no     | 1 day     |
| ``http_get``         | :mod:`infra.tools.http_get`    | yes      | 5 min     |
| ``sql_query``        | :mod:`infra.tools.sql_query`   | no       | 10 min    |

Building the registry does no I/O: the docs index is built on the first search, the database is
opened per query and HTTP clients are created per request. Each tool bounds what one call may
cost: ``http_get`` reaches only allowlisted ``host:port`` pairs on public addresses (or networks
the operator opened), ``sql_query`` caps rows, bytes, cell size and time and calls only
allowlisted SQL functions, and ``calculator`` bounds input length, nesting depth, number size
and time.
"""

from __future__ import annotations

from core.settings import Settings
from core.tools import ToolRegistry
from infra.tools.calculator import make_calculator_tool
from infra.tools.http_get import make_http_get_tool
from infra.tools.python_docs import make_python_docs_tool
from infra.tools.sql_query import ensure_example_database, make_sql_query_tool

__all__ = ["builtin_registry", "ensure_example_database"]


def builtin_registry(settings: Settings) -> ToolRegistry:
    """A registry with the four built-in tools, configured from ``settings``.

    Args:
        settings: supplies ``http_allowed_hosts``, ``http_allowed_networks``,
            ``http_max_bytes``, ``http_timeout_s``, ``sql_database_path``, ``sql_max_rows``,
            ``sql_max_result_bytes`` and ``sql_max_cell_bytes``.

    Returns:
        A :class:`ToolRegistry` listing ``calculator``, ``python_docs_search``, ``http_get`` and
        ``sql_query``, in that order.

    Raises:
        ValueError: an ``http_allowed_hosts`` or ``http_allowed_networks`` entry is malformed
            (the message names the setting).
    """
    return ToolRegistry(
        [
            make_calculator_tool(),
            make_python_docs_tool(),
            make_http_get_tool(
                allowed_hosts=settings.http_allowed_hosts,
                allowed_networks=settings.http_allowed_networks,
                max_bytes=settings.http_max_bytes,
                timeout_s=settings.http_timeout_s,
            ),
            make_sql_query_tool(
                database_path=settings.sql_database_path,
                max_rows=settings.sql_max_rows,
                max_result_bytes=settings.sql_max_result_bytes,
                max_cell_bytes=settings.sql_max_cell_bytes,
            ),
        ]
    )
