"""``python -m benchmarks.peer_worker``: a Temporal worker for the pydantic-ai peer of benchmark 7.

It connects with ``PydanticAIPlugin`` on the client (the worker inherits the client's plugins,
which register the peer agent's activities and configure the payload converter and sandbox) and
runs :class:`~benchmarks.peer_agent.PeerAgentWorkflow` until SIGINT or SIGTERM, then shuts down
gracefully. Worker limits match agentflow's ``worker.py`` (the SDK's default slots, 10 s graceful
shutdown), so neither side gets a bigger pool.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from datetime import timedelta
from typing import Annotated

import typer
from pydantic_ai.durable_exec.temporal import PydanticAIPlugin
from temporalio.client import Client
from temporalio.worker import Worker

from benchmarks.peer_agent import PeerAgentWorkflow

log = logging.getLogger("benchmarks.peer_worker")


async def serve(address: str, task_queue: str, stop: asyncio.Event) -> None:
    """Poll ``task_queue`` on the Temporal server at ``address`` until ``stop`` is set."""
    client = await Client.connect(address, plugins=[PydanticAIPlugin()])
    worker = Worker(
        client,
        task_queue=task_queue,
        workflows=[PeerAgentWorkflow],
        graceful_shutdown_timeout=timedelta(seconds=10),
    )
    log.info("peer worker polling task queue %r on %s", task_queue, address)
    async with worker:
        await stop.wait()
    log.info("peer worker stopped")


def main(
    address: Annotated[str, typer.Option(help="Temporal frontend, HOST:PORT.")] = "127.0.0.1:7233",
    task_queue: Annotated[str, typer.Option(help="Task queue to poll.")] = "peer",
) -> None:
    """Run the peer worker until SIGINT or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(address, task_queue, stop)

    asyncio.run(_main())


if __name__ == "__main__":
    typer.run(main)
