"""The workflow runner agentflow's plugin installs is still a sandbox (infra/sandbox.py).

:class:`infra.sandbox.CompiledCodeSandboxedWorkflowRunner` only compiles the SDK's glue code once
instead of on every call; these tests check that what the sandbox is for still holds on a real
(time-skipping) Temporal server: each run gets its own copy of the workflow module, and a
non-deterministic call fails the workflow task.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.worker import Worker

from infra.sandbox import CompiledCodeSandboxedWorkflowRunner, _compiled, compiled_code_supported
from infra.temporal import workflow_runner
from tests.sandbox_probe import SandboxProbeCount, SandboxProbeEnviron


def test_this_sdk_gets_the_compiled_code_runner() -> None:
    # Fails after an SDK upgrade that changed the private method the runner overrides: then
    # check whether the SDK now caches compilation itself, and drop or adapt infra/sandbox.py.
    assert compiled_code_supported()
    assert isinstance(workflow_runner(sandboxed=True), CompiledCodeSandboxedWorkflowRunner)
    assert not isinstance(workflow_runner(sandboxed=False), CompiledCodeSandboxedWorkflowRunner)


async def test_each_run_gets_its_own_module_and_the_glue_compiles_once(client: Client) -> None:
    queue = f"sandbox-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=queue, workflows=[SandboxProbeCount]):
        before = _compiled.cache_info()
        runs = [
            await client.execute_workflow(
                SandboxProbeCount.run, id=f"probe-{uuid.uuid4().hex}", task_queue=queue
            )
            for _ in range(3)
        ]
        after = _compiled.cache_info()
    assert runs == [1, 1, 1]  # module state does not leak from one run to the next
    assert after.hits > before.hits  # the glue strings were reused, not recompiled
    assert after.currsize <= 16


async def test_a_non_deterministic_call_still_fails_the_workflow_task(client: Client) -> None:
    queue = f"sandbox-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=queue, workflows=[SandboxProbeEnviron]):
        handle = await client.start_workflow(
            SandboxProbeEnviron.run, id=f"probe-{uuid.uuid4().hex}", task_queue=queue
        )
        failure = ""
        deadline = time.monotonic() + 15
        while not failure and time.monotonic() < deadline:
            async for event in handle.fetch_history_events():
                if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                    failure = event.workflow_task_failed_event_attributes.failure.message
                    break
            await asyncio.sleep(0.1)
        await handle.terminate("probe done")
    assert "os.environ" in failure, failure
