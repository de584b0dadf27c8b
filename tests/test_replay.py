"""Replay: recorded histories must replay against today's workflow code.

The v1 shape (before the v2 core: nine regular activities, the ``approve`` signal) is retired:
``tests/histories_retired/v1_happy_path.json`` shows that its histories no longer replay.
``v2_*.json`` are recorded from today's shape with
``make histories`` (``AGENTFLOW_SAVE_HISTORIES=1 pytest tests/test_workflow.py``);
``v2_token_signals_*.json`` were recorded before token events moved to Redis and the terminal
record stored the job's stream (kept: jobs in flight across that upgrade). A change that
makes ``AgentWorkflow`` non-deterministic for any of them fails here; such a change needs
``workflow.patched``. The Replayer uses the same ``AgentflowPlugin`` as the worker.
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
    # Recorded by the code before the structure step (the workflow's mixins, dfea97c): jobs
    # started by that code must finish on today's workflow.
    assert {"v2_pre020_happy_path", "v2_pre020_approved", "v2_pre020_parallel_tools"} <= names
    assert not any(name.startswith("v1_") for name in names), "v1 is retired (CHANGELOG 0.2.0)"


@pytest.mark.parametrize(
    ("name", "text"), [(p.stem, p.read_text()) for p in HISTORIES], ids=[p.stem for p in HISTORIES]
)
async def test_recorded_history_replays(name: str, text: str, plugin: AgentflowPlugin) -> None:
    history = WorkflowHistory.from_json(f"agent-{name}", text)
    await Replayer(workflows=[], plugins=[plugin]).replay_workflow(history)


async def test_a_retired_v1_history_no_longer_replays(plugin: AgentflowPlugin) -> None:
    """The v1 shape is retired (``PATCH_CORE_V2`` deprecated, its code removed): a v1 history
    fails replay as non-deterministic, which is why CHANGELOG 0.2.0 says to let v1 jobs end
    before upgrading."""
    path = Path(__file__).parent / "histories_retired" / "v1_happy_path.json"
    history = WorkflowHistory.from_json("agent-v1", path.read_text())
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
