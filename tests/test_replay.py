"""Replay: recorded histories must replay against today's workflow code.

``tests/histories/*.json`` were recorded from representative runs (happy path, parallel tools,
approved, expired, escalated; ``select_with_plan`` after the ``select-model-with-plan-tools``
patch, the others before it) with ``AGENTFLOW_SAVE_HISTORIES=1 pytest tests/test_workflow.py``. A
change that makes ``AgentWorkflow`` non-deterministic for those runs fails here; such a change
needs ``workflow.patched``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from core.models import AgentRequest
from tests.workflow_support import Harness
from workflows.agent import AgentWorkflow
from workflows.sandbox import workflow_runner

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def test_histories_are_checked_in() -> None:
    names = {p.stem for p in HISTORIES}
    assert {"happy_path", "parallel_tools", "approved", "expired", "escalated"} <= names
    assert "select_with_plan" in names  # recorded with the patch; the others from before it


@pytest.mark.parametrize(
    ("name", "text"), [(p.stem, p.read_text()) for p in HISTORIES], ids=[p.stem for p in HISTORIES]
)
async def test_recorded_history_replays(name: str, text: str) -> None:
    history = WorkflowHistory.from_json(f"agent-{name}", text)
    replayer = Replayer(
        workflows=[AgentWorkflow],
        data_converter=pydantic_data_converter,
        workflow_runner=workflow_runner(),
    )
    await replayer.replay_workflow(history)


async def test_run_then_replay(harness: Harness) -> None:
    handle = await harness.start(AgentRequest(query="What is 2 ** 16?"))
    await handle.result()
    replayer = Replayer(
        workflows=[AgentWorkflow],
        data_converter=pydantic_data_converter,
        workflow_runner=workflow_runner(),
    )
    await replayer.replay_workflow(await handle.fetch_history())
