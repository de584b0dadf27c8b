"""``ast.parse`` that is safe to call from several threads at once.

CPython 3.11 keeps the recursion counter of its AST conversion per interpreter, not per thread:
two threads inside ``ast.parse`` at the same time can fail with ``SystemError: AST constructor
recursion depth mismatch`` (seen here when the planner, which runs in the worker's thread pool,
parsed while another thread did). Every ``ast.parse`` in agentflow goes through
:func:`parse_expression`, which holds one process-wide lock; the inputs are bounded (at most a few
hundred characters), so the lock is held for microseconds.
"""

from __future__ import annotations

import ast
import threading

_LOCK = threading.Lock()


def parse_expression(source: str) -> ast.Expression:
    """``ast.parse(source, mode="eval")`` under the process-wide lock.

    Raises:
        SyntaxError: ``source`` is not a Python expression.
        ValueError: ``source`` contains a NUL byte.
    """
    with _LOCK:
        return ast.parse(source, mode="eval")
