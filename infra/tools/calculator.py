"""The ``calculator`` tool: safe evaluation of arithmetic expressions.

The hazard: evaluating user text is code execution unless every construct is whitelisted, and even
pure arithmetic can hang a worker (``9**9**9`` has about 370 million digits) or crash it
(``"-" * 499 + "1"`` nests 500 levels deep, and both Python's parser and the recursive evaluator
then raise ``RecursionError``). So, in this order:

1. the expression is refused when longer than :data:`MAX_EXPRESSION_CHARS`;
2. it is parsed with :mod:`ast` (parser failures of any kind, recursion and memory included,
   become a :class:`~core.errors.ToolError`) and refused when its syntax tree is deeper than
   :data:`MAX_EXPRESSION_DEPTH` (measured without recursion), so the recursive evaluator stays
   far below Python's recursion limit;
3. it is refused unless it contains only numbers, the arithmetic operators ``+ - * / // % **``,
   parentheses, unary signs and calls of whitelisted :mod:`math` functions by name;
4. only then is it evaluated by ``simpleeval`` with the same whitelist. Powers are estimated
   before they are computed, every intermediate integer is capped at :data:`MAX_RESULT_DIGITS`
   digits, ``factorial`` accepts arguments up to :data:`MAX_FACTORIAL_ARG` only, and the
   evaluator checks a deadline (:data:`TIME_LIMIT_S`) before each node: a cooperative check,
   which stops the work because every single step is bounded by the limits above.

The tool runs the evaluation in a worker thread, off the event loop.
"""

from __future__ import annotations

import ast
import asyncio
import time
from typing import Any

import simpleeval
from pydantic import BaseModel, Field, JsonValue, field_validator

from core.arithmetic import (
    ALLOWED_NODES,
    CONSTANTS,
    FUNCTIONS,
    MAX_EXPRESSION_CHARS,
    MAX_EXPRESSION_DEPTH,
    OPERATORS,
    check_number,
    expression_depth,
)
from core.errors import ToolError
from core.pyast import parse_expression
from core.tools import Tool, ToolMetadata

TIME_LIMIT_S = 1.0
"""Evaluation stops with a :class:`ToolError` once it has run this long, in seconds."""


class CalculatorParams(BaseModel):
    """Parameters of the ``calculator`` tool.

    The expression is normalised to Python's own spelling of it (``17*23`` and ``17 * 23`` are
    one call), so equal calls share a tool-cache entry and the planner's proposal is recognised
    as a duplicate of the request's explicit call. Text that does not parse is kept as written
    (stripped) for the tool to refuse with its own message.
    """

    expression: str = Field(
        min_length=1,
        max_length=MAX_EXPRESSION_CHARS,
        description="Arithmetic expression, e.g. '17 * (3 + 4)' or 'sqrt(2) * pi'.",
    )

    @field_validator("expression")
    @classmethod
    def _normalise(cls, value: str) -> str:
        text = value.strip()
        try:
            tree = parse_expression(text)
            if expression_depth(tree) > MAX_EXPRESSION_DEPTH:
                return text  # the tool refuses it; unparse would recurse that deep
            return ast.unparse(tree)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return text


def _parse(expression: str) -> ast.Expression:
    """Parse ``expression`` within the length and depth limits.

    Raises:
        ToolError: too long, not an expression, too complex to parse, or nested too deeply.
    """
    text = expression.strip()
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ToolError(
            f"expression is too long ({len(text)} characters; at most {MAX_EXPRESSION_CHARS})"
        )
    try:
        tree = parse_expression(text)
    except SyntaxError as exc:
        raise ToolError(f"not a valid arithmetic expression: {exc.msg}") from exc
    except ValueError as exc:  # a NUL byte
        raise ToolError("not a valid arithmetic expression: it contains a NUL byte") from exc
    except (RecursionError, MemoryError) as exc:
        raise ToolError(
            f"expression is nested too deeply (at most {MAX_EXPRESSION_DEPTH} levels)"
        ) from exc
    if expression_depth(tree) > MAX_EXPRESSION_DEPTH:
        raise ToolError(f"expression is nested too deeply (at most {MAX_EXPRESSION_DEPTH} levels)")
    return tree


def _validate(expression: str) -> ast.Expression:
    """Parse ``expression`` and refuse anything but whitelisted arithmetic."""
    tree = _parse(expression)
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if node.id not in FUNCTIONS and node.id not in CONSTANTS:
                known = ", ".join(sorted([*FUNCTIONS, *CONSTANTS]))
                raise ToolError(f"unknown name {node.id!r} (known: {known})")
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name):
                raise ToolError("only calls of the known math functions are allowed")
            if node.func.id not in FUNCTIONS:
                known = ", ".join(sorted(FUNCTIONS))
                raise ToolError(f"unknown function {node.func.id!r} (known: {known})")
            if node.keywords:
                raise ToolError("keyword arguments are not allowed")
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, int | float):
                raise ToolError(f"only numbers are allowed, not {node.value!r}")
        elif isinstance(node, ast.BitXor):
            raise ToolError("'^' is not supported; use '**' for powers")
        elif not isinstance(node, ALLOWED_NODES):
            raise ToolError(f"{type(node).__name__} is not allowed in an arithmetic expression")
    callees = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in FUNCTIONS and id(node) not in callees:
            raise ToolError(f"{node.id!r} is a function; call it, e.g. {node.id}(2)")
    return tree


class _DeadlineEval(simpleeval.SimpleEval):  # type: ignore[misc]
    """``simpleeval`` that checks a deadline before evaluating each node."""

    def __init__(self, time_limit_s: float) -> None:
        super().__init__(
            operators=dict(OPERATORS), functions=dict(FUNCTIONS), names=dict(CONSTANTS)
        )
        self._time_limit_s = time_limit_s
        self._deadline = time.monotonic() + time_limit_s

    def _eval(self, node: ast.AST) -> Any:
        if time.monotonic() > self._deadline:
            raise ToolError(f"evaluation took longer than {self._time_limit_s:g} s and was stopped")
        return super()._eval(node)


def evaluate_expression(expression: str, *, time_limit_s: float = TIME_LIMIT_S) -> int | float:
    """Evaluate an arithmetic expression safely (CPU-bound: call it from a worker thread).

    Args:
        expression: numbers, ``+ - * / // % **``, parentheses, unary signs, the constants
            ``pi``, ``e``, ``tau`` and calls of :data:`FUNCTIONS` (``sqrt``, ``log``, ``sin``,
            ``abs``, ``round``, ``min``, ``max``, ...); at most :data:`MAX_EXPRESSION_CHARS`
            characters and :data:`MAX_EXPRESSION_DEPTH` levels of nesting.
        time_limit_s: evaluation stops after this many seconds.

    Returns:
        The value: an ``int`` for exact integer arithmetic, else a finite ``float``.

    Raises:
        ToolError: too long or too deeply nested, syntax error, unknown name, disallowed
            construct, division by zero, math domain error, a result that is too large, or out
            of time (non-retryable).
    """
    tree = _validate(expression)
    evaluator = _DeadlineEval(time_limit_s)
    try:
        value = evaluator.eval(expression.strip(), previously_parsed=tree.body)
    except ToolError:
        raise
    except (RecursionError, MemoryError) as exc:
        raise ToolError(
            f"expression is nested too deeply (at most {MAX_EXPRESSION_DEPTH} levels)"
        ) from exc
    except ZeroDivisionError as exc:
        raise ToolError("division by zero") from exc
    except OverflowError as exc:
        raise ToolError("result is too large (numeric overflow)") from exc
    except simpleeval.InvalidExpression as exc:
        raise ToolError(f"not a valid arithmetic expression: {exc}") from exc
    except (ValueError, TypeError) as exc:
        raise ToolError(f"cannot evaluate {expression.strip()!r}: {exc}") from exc
    result: int | float = check_number(value)
    return result


async def calculator(params: CalculatorParams) -> dict[str, JsonValue]:
    """Run the ``calculator`` tool.

    Args:
        params: the validated parameters.

    Returns:
        ``{"expression": str, "value": int | float}``.

    Raises:
        ToolError: the expression was refused or cannot be evaluated (non-retryable).
    """
    value = await asyncio.to_thread(evaluate_expression, params.expression)
    return {"expression": params.expression, "value": value}


def make_calculator_tool() -> Tool:
    """The ``calculator`` tool, ready to register (pure and fast, so parallel-safe and cached)."""
    return Tool(
        name="calculator",
        description=(
            "Evaluate an arithmetic expression exactly: numbers, + - * / // % ** and parentheses, "
            "constants pi, e, tau and math functions such as sqrt, log, sin, cos, abs, round, "
            "min, max. Returns {expression, value}."
        ),
        params_model=CalculatorParams,
        fn=calculator,
        metadata=ToolMetadata(
            answers_query=True,
            parallel_safe=True,
            cacheable=True,
            cache_ttl_s=86400,
            requires_approval=False,
            runs_locally=True,  # bounded CPU, in-memory: a local activity
            timeout_s=5,
        ),
    )
