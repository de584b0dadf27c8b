"""The workflows a worker (or a Replayer) registers: one list, so none is forgotten."""

from __future__ import annotations

from workflows.agent import AgentWorkflow
from workflows.batch import BatchWorkflow
from workflows.retention import RetentionWorkflow


def all_workflows() -> list[type]:
    """Every agentflow workflow class: ``[AgentWorkflow, BatchWorkflow, RetentionWorkflow]``."""
    return [AgentWorkflow, BatchWorkflow, RetentionWorkflow]
