"""OpenTelemetry tracing set-up for the worker, the API and the tests.

With ``AGENTFLOW_TRACING=true`` spans come from Temporal's ``OpenTelemetryPlugin`` (inside
:class:`infra.temporal.AgentflowPlugin`, on every client): one trace runs from ``StartWorkflow``
through the workflow and each activity. That plugin needs the global tracer provider to be
replay-safe (so a replayed workflow does not emit its spans twice), which is what
:func:`configure_tracing` installs. ``AGENTFLOW_OTEL_CONSOLE=1`` prints spans (and turns tracing
on); any other exporter can be added to the provider this returns.
"""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from temporalio.contrib.opentelemetry import ReplaySafeTracerProvider, create_tracer_provider


def configure_tracing(service_name: str) -> ReplaySafeTracerProvider:
    """Install a replay-safe global tracer provider named ``service_name`` (once per process).

    Returns:
        The global provider, so callers can attach span processors and exporters.

    Raises:
        RuntimeError: another library already installed a global provider that is not
            replay-safe (OpenTelemetry allows only one per process).
    """
    current = trace.get_tracer_provider()
    if isinstance(current, ReplaySafeTracerProvider):
        return current
    provider = create_tracer_provider(
        resource=Resource.create({"service.name": service_name}), shutdown_on_exit=False
    )
    if os.environ.get("AGENTFLOW_OTEL_CONSOLE"):
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    if not isinstance(trace.get_tracer_provider(), ReplaySafeTracerProvider):
        raise RuntimeError(
            "a global OpenTelemetry tracer provider was installed before agentflow's; the "
            "Temporal OpenTelemetry plugin needs the replay-safe one (create_tracer_provider)"
        )
    return provider
