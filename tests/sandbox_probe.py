"""Workflows that probe the workflow sandbox (tests/test_sandbox.py); imported inside it per run."""

from __future__ import annotations

import os

from temporalio import workflow

RUNS = 0
"""Incremented by every run: a sandboxed run sees its own fresh copy of this module."""


@workflow.defn(name="SandboxProbeCount")
class SandboxProbeCount:
    """Returns how many runs this copy of the module has seen (1 in a sandbox)."""

    @workflow.run
    async def run(self) -> int:
        """The module counter after this run's increment."""
        global RUNS
        RUNS += 1
        return RUNS


@workflow.defn(name="SandboxProbeEnviron")
class SandboxProbeEnviron:
    """Reads the environment: the sandbox must fail its workflow task."""

    @workflow.run
    async def run(self) -> str:
        """The PATH variable (never returned under the sandbox)."""
        return os.environ.get("PATH", "")
