"""One way to connect to Temporal, shared by the API, the worker and the CLI.

Every client uses the pydantic data converter (our payloads are pydantic models) and the
OpenTelemetry tracing interceptor, so one trace runs from the HTTP request that starts a workflow
through each of its activities.
"""

from __future__ import annotations

from temporalio.client import Client
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.contrib.pydantic import pydantic_data_converter

from core.settings import Settings


def workflow_id_for(job_id: str) -> str:
    """The workflow id of a job: ``agent-<job_id>`` (makes starts idempotent per job)."""
    return f"agent-{job_id}"


async def connect(settings: Settings) -> Client:
    """Connect to the Temporal frontend the settings name.

    Raises:
        RuntimeError: from the SDK when the server cannot be reached (the message names the
            address).
    """
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
        interceptors=[TracingInterceptor()],
    )
