"""The calculator's grammar: what an arithmetic expression may contain, and its limits.

One definition shared by the ``calculator`` tool (:mod:`infra.tools.calculator`, which parses and
evaluates) and the rules planner (:mod:`domain.planner`, which recognises arithmetic in a
question), so the planner never proposes an expression the tool would refuse. The limits and the
reasons for them are described in :mod:`infra.tools.calculator`.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from core.errors import ToolError

MAX_RESULT_DIGITS = 1000
"""Largest integer result (and intermediate power) accepted, in decimal digits."""
MAX_FACTORIAL_ARG = 500
"""Largest argument of ``factorial``."""
MAX_EXPRESSION_CHARS = 500
"""Longest expression accepted, in characters."""
MAX_EXPRESSION_DEPTH = 100
"""Deepest syntax tree accepted (the root ``Expression`` node counts as level 1). A left-to-right
chain like ``1 + 2 + ... + n`` is ``n + 1`` levels deep. The evaluator recurses about two Python
frames per level and ``ast.unparse`` about four, so this keeps both far below Python's recursion
limit of 1000 frames."""

_MAX_RESULT_BITS = int(MAX_RESULT_DIGITS * math.log2(10)) + 1


def expression_depth(tree: ast.AST) -> int:
    """Depth of the syntax tree ``tree`` (a lone node is 1), computed without recursion.

    Args:
        tree: any parsed node, typically an ``ast.Expression``.

    Returns:
        The number of nodes on the longest root-to-leaf path, operator and context nodes
        (``ast.Add``, ``ast.Load``) included.
    """
    deepest = 0
    stack: list[tuple[ast.AST, int]] = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


def check_number(value: Any) -> Any:
    """Refuse results that are not finite real numbers or have too many digits."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        if value.bit_length() > _MAX_RESULT_BITS:
            raise ToolError(f"result is too large (more than {MAX_RESULT_DIGITS} digits)")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ToolError("result is not a finite number (overflow or infinity)")
        return value
    if isinstance(value, complex):
        raise ToolError("result is not a real number (e.g. a fractional power of a negative)")
    raise ToolError(f"result is not a number ({type(value).__name__})")


def _safe_pow(base: Any, exponent: Any) -> Any:
    """``base ** exponent``, refused when the result would exceed the digit limit."""
    if (
        isinstance(base, int)
        and isinstance(exponent, int)
        and exponent > 0
        and abs(base) > 1
        and exponent * math.log10(abs(base)) > MAX_RESULT_DIGITS
    ):
        raise ToolError(
            f"result of {base} ** {exponent} is too large (more than {MAX_RESULT_DIGITS} digits)"
        )
    return check_number(base**exponent)


def _checked(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a binary operator or function so its result passes :func:`_check_number`."""

    def wrapper(*args: Any) -> Any:
        return check_number(fn(*args))

    return wrapper


def _factorial(n: Any) -> int:
    if not isinstance(n, int) or isinstance(n, bool):
        raise ToolError("factorial() takes a non-negative integer")
    if n > MAX_FACTORIAL_ARG:
        raise ToolError(f"factorial() argument is too large (at most {MAX_FACTORIAL_ARG})")
    return math.factorial(n)


OPERATORS: dict[type[ast.AST], Callable[..., Any]] = {
    ast.Add: _checked(operator.add),
    ast.Sub: _checked(operator.sub),
    ast.Mult: _checked(operator.mul),
    ast.Div: _checked(operator.truediv),
    ast.FloorDiv: _checked(operator.floordiv),
    ast.Mod: _checked(operator.mod),
    ast.Pow: _safe_pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}

_MATH_FUNCTIONS = (  # noqa: SIM905 (a word list reads better than 31 quoted lines)
    "sqrt cbrt exp log log2 log10 log1p sin cos tan asin acos atan atan2 sinh cosh tanh asinh "
    "acosh atanh degrees radians hypot floor ceil trunc fabs gcd isqrt copysign fmod"
).split()

FUNCTIONS: dict[str, Callable[..., Any]] = {
    **{name: _checked(getattr(math, name)) for name in _MATH_FUNCTIONS if hasattr(math, name)},
    "factorial": _factorial,
    "pow": _checked(math.pow),
    "abs": _checked(abs),
    "round": _checked(round),
    "min": _checked(min),
    "max": _checked(max),
}
"""Functions the calculator knows, by name."""

CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}
"""Named constants the calculator knows."""

ALLOWED_NODES: tuple[type[ast.AST], ...] = (
    ast.Expression,
    ast.BinOp,
    ast.UnaryOp,
    ast.Call,
    ast.Name,
    ast.Load,
    ast.Constant,
    *OPERATORS,
)
"""The syntax nodes an arithmetic expression may contain (the planner uses the same list)."""
