"""The workflow sandbox configuration every worker and replayer of ``AgentWorkflow`` uses.

Temporal runs workflow code in a sandbox that re-imports non-passthrough modules per run and warns
when a module is first imported after the workflow loaded. ``AgentWorkflow`` imports
``activities.agent`` (passed through) for its activity references, which pulls in redis-py and
OpenTelemetry; both import submodules lazily on first use (redis-py's observability recorder and
defaults, OpenTelemetry's context and metrics), and those late imports land inside the sandbox.
Passing both packages through is safe: workflow code never calls them, and they keep no
per-workflow state.
"""

from __future__ import annotations

from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

PASSTHROUGH_MODULES = ("redis", "opentelemetry")
"""Packages the sandbox shares with the host instead of re-importing (see the module docstring)."""


def workflow_runner() -> SandboxedWorkflowRunner:
    """The sandboxed runner with :data:`PASSTHROUGH_MODULES` passed through."""
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH_MODULES)
    )
