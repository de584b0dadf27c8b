"""The workflow sandbox, without recompiling the SDK's own glue code on every call into it.

temporalio 1.35's sandbox runs each call into a sandboxed workflow (every activation, and every
payload's serialization-context and external-storage lookup) as ``exec`` of a small source
string, which CPython compiles anew each time: about 40 compilations per agentflow job, 3 ms of
worker CPU (8 % of it; profiled with py-spy under load, ``_Instance._run_code``'s own time).
:class:`CompiledCodeSandboxedWorkflowRunner` is the SDK's ``SandboxedWorkflowRunner`` with one
change: each distinct source string is compiled once per process and the code object is
executed instead. ``exec`` runs a code object exactly as it runs the string it was compiled from,
in the same globals, so the sandbox (its restrictions, its per-run module copies, its
determinism checks) is untouched.

The strings are the SDK's constants plus one import line per workflow class, so the cache is
small; it is bounded anyway (:data:`COMPILED_CODE_CACHE_SIZE`). The override depends on the
SDK's private ``_Instance._run_code(code, **globals)``; :func:`compiled_code_supported` checks
that shape at start-up and the plain runner is used when it does not hold (a newer SDK), with a
warning. Remove this module once the SDK caches the compilation itself.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
from types import CodeType
from typing import Any

from temporalio.worker import WorkflowInstance, WorkflowInstanceDetails, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner
from temporalio.worker.workflow_sandbox import _runner as sandbox_runner

log = logging.getLogger(__name__)

COMPILED_CODE_CACHE_SIZE = 256
"""Distinct source strings kept compiled per process (the SDK uses about six, plus one per
workflow class)."""


@functools.lru_cache(maxsize=COMPILED_CODE_CACHE_SIZE)
def _compiled(code: str) -> CodeType:
    return compile(code, "<string>", "exec")  # the SDK's own source strings, never user input


def compiled_code_supported() -> bool:
    """Whether this SDK's sandbox instance has the ``_run_code(code, **globals)`` this relies on."""
    run_code = getattr(getattr(sandbox_runner, "_Instance", None), "_run_code", None)
    if run_code is None:
        return False
    params = list(inspect.signature(run_code).parameters.values())
    return (
        len(params) == 3
        and params[1].name == "code"
        and params[2].kind is inspect.Parameter.VAR_KEYWORD
    )


class _CompiledCodeInstance(sandbox_runner._Instance):
    """The SDK's sandboxed instance, executing cached code objects (see the module docstring)."""

    def _run_code(self, code: str, **extra_globals: Any) -> None:
        # exec() takes a code object where the SDK passes the source string.
        super()._run_code(_compiled(code), **extra_globals)  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class CompiledCodeSandboxedWorkflowRunner(SandboxedWorkflowRunner):
    """``SandboxedWorkflowRunner`` whose calls into the sandbox skip recompiling the SDK's glue."""

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        """Implements :py:meth:`WorkflowRunner.create_instance` (a sandboxed instance)."""
        return _CompiledCodeInstance(det, self.runner_class, self.restrictions)


def sandboxed_runner(passthrough_modules: tuple[str, ...]) -> WorkflowRunner:
    """A sandboxed runner with ``passthrough_modules`` shared with the host.

    :class:`CompiledCodeSandboxedWorkflowRunner` when :func:`compiled_code_supported`, else the
    SDK's ``SandboxedWorkflowRunner`` (logged once per call as a warning).
    """
    runner_class: type[SandboxedWorkflowRunner] = CompiledCodeSandboxedWorkflowRunner
    if not compiled_code_supported():
        log.warning(
            "this temporalio's sandbox has no _Instance._run_code(code, **globals); using the "
            "plain SandboxedWorkflowRunner (about 3 ms more worker CPU per job)"
        )
        runner_class = SandboxedWorkflowRunner
    runner = runner_class()
    return dataclasses.replace(
        runner, restrictions=runner.restrictions.with_passthrough_modules(*passthrough_modules)
    )
