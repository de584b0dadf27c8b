"""``agentflow dev``: the whole stack (Temporal, Redis, the example site, worker, API) locally.

One module per job:

- :mod:`.ports`: loopback TCP ports (taken? free? wait for a listener), shared with the tests;
- :mod:`.supervisor`: child processes in their own sessions, their logs, stopping them all;
- :mod:`.temporal` and :mod:`.redis_server`: find, probe, start or reuse those servers;
- :mod:`.stack`: :class:`DevStack`, what starts in which order and with which environment.

The names below are re-exported for the CLI, the benchmarks and the tests, and loaded only when
first used (PEP 562), so importing :mod:`cli.devstack.ports` does not import Temporal or Redis.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cli.devstack.ports import free_port, port_in_use, wait_for_port
    from cli.devstack.redis_server import find_redis_server, redis_answers
    from cli.devstack.stack import DevStack
    from cli.devstack.supervisor import (
        SHUTDOWN_GRACE_S,
        ChildExitedError,
        ChildProcess,
        DevStackError,
        Supervisor,
    )
    from cli.devstack.temporal import (
        find_temporal,
        missing_search_attributes,
        search_attribute_args,
        temporal_answers,
    )

_WHERE = {
    "free_port": "ports",
    "port_in_use": "ports",
    "wait_for_port": "ports",
    "find_redis_server": "redis_server",
    "redis_answers": "redis_server",
    "DevStack": "stack",
    "SHUTDOWN_GRACE_S": "supervisor",
    "ChildExitedError": "supervisor",
    "ChildProcess": "supervisor",
    "DevStackError": "supervisor",
    "Supervisor": "supervisor",
    "find_temporal": "temporal",
    "missing_search_attributes": "temporal",
    "search_attribute_args": "temporal",
    "temporal_answers": "temporal",
}

__all__ = [
    "SHUTDOWN_GRACE_S",
    "ChildExitedError",
    "ChildProcess",
    "DevStack",
    "DevStackError",
    "Supervisor",
    "find_redis_server",
    "find_temporal",
    "free_port",
    "missing_search_attributes",
    "port_in_use",
    "redis_answers",
    "search_attribute_args",
    "temporal_answers",
    "wait_for_port",
]


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first use."""
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
