"""Replay: recorded histories must replay against today's workflow code.

``tests/histories/v2_*.json`` are recorded from today's shape (``AgentWorkflowInput.shape`` 2)
with ``make histories``; ``v2_shape1_*.json`` by 0.3.0 (shape 1: compression is a local activity
of its own; jobs in flight across the upgrade to 0.3.1 replay them); ``v2_pre021_*.json`` by
0.2.0 (shape 0: the first record is a local activity of its own too). A change that makes
``AgentWorkflow`` non-deterministic for any of them fails here; README, "Changing workflow
code", says how to make one. The Replayer uses the same ``AgentflowPlugin`` as the worker.

Retired (``tests/histories_retired``): the v1 shape (0.2.0 removed its code) and the histories
recorded by 0.1.x, whose ``agentflow-core-v2`` patch marker is not deprecated (0.3.0 removed the
``deprecate_patch`` call 0.2.0 made); both no longer replay, which is why the CHANGELOG says to
pass through 0.2.x and let older jobs finish.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from core.models import AgentRequest, ToolCall
from infra.temporal import AgentflowPlugin
from tests.workflow_support import Harness
from workflows.agent import AgentWorkflow

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def test_histories_are_checked_in() -> None:
    names = {p.stem for p in HISTORIES}
    assert {"v2_happy_path", "v2_approved", "v2_expired", "v2_escalated"} <= names
    # Recorded by 0.2.0 (shape 0): jobs started by it must finish on today's workflow.
    assert {"v2_pre021_happy_path", "v2_pre021_approved", "v2_pre021_reminders"} <= names
    # Recorded by 0.3.0 (shape 1).
    assert {"v2_shape1_happy_path", "v2_shape1_approved", "v2_shape1_escalated"} <= names
    assert not any(name.startswith("v1_") for name in names), "v1 is retired (CHANGELOG 0.2.0)"


@pytest.mark.parametrize(
    ("name", "text"), [(p.stem, p.read_text()) for p in HISTORIES], ids=[p.stem for p in HISTORIES]
)
async def test_recorded_history_replays(name: str, text: str, plugin: AgentflowPlugin) -> None:
    history = WorkflowHistory.from_json(f"agent-{name}", text)
    await Replayer(workflows=[], plugins=[plugin]).replay_workflow(history)


RETIRED = sorted((Path(__file__).parent / "histories_retired").glob("*.json"))


@pytest.mark.parametrize(
    ("name", "text"), [(p.stem, p.read_text()) for p in RETIRED], ids=[p.stem for p in RETIRED]
)
async def test_a_retired_history_no_longer_replays(
    name: str, text: str, plugin: AgentflowPlugin
) -> None:
    """v1 histories (CHANGELOG 0.2.0) and 0.1.x histories with the non-deprecated
    ``agentflow-core-v2`` marker (CHANGELOG 0.3.0) fail replay as non-deterministic: the reason
    the upgrade notes say to let such jobs end before upgrading."""
    history = WorkflowHistory.from_json(f"agent-{name}", text)
    result = await Replayer(workflows=[], plugins=[plugin]).replay_workflow(
        history, raise_on_replay_failure=False
    )
    assert result.replay_failure is not None


async def test_run_then_replay(harness: Harness, plugin: AgentflowPlugin) -> None:
    handle = await harness.start(AgentRequest(query="What is 2 ** 16?"))
    await handle.result()
    await Replayer(workflows=[], plugins=[plugin]).replay_workflow(await handle.fetch_history())


async def test_worker_client_and_replayer_share_the_plugin(
    harness: Harness, plugin: AgentflowPlugin
) -> None:
    """A history whose payloads live in external storage replays only through the plugin.

    The worker wrote the 256 KiB tool result through the client's plugin (its converter stores
    it in the job database and leaves a reference in history); a Replayer with the same plugin
    reads it back, a Replayer with the plain pydantic converter cannot.
    """
    assert plugin in harness.client.config()["plugins"]
    handle = await harness.start(
        AgentRequest(
            query="summarise the report (replay)",
            tool_calls=[ToolCall(id="r", name="big_report", parameters={"size_kib": 256})],
        )
    )
    await handle.result()
    history = await handle.fetch_history()
    assert "externalPayloads" in history.to_json(), "the large result went to external storage"

    await Replayer(workflows=[], plugins=[plugin]).replay_workflow(history)
    plain = Replayer(workflows=[AgentWorkflow], data_converter=pydantic_data_converter)
    with pytest.raises(Exception, match="external storage is not configured"):
        await plain.replay_workflow(history)
