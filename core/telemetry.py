"""OpenTelemetry tracing set-up for the worker and the API.

Spans come from Temporal's ``TracingInterceptor`` (on every client, see :mod:`core.temporal`): one
trace runs from ``StartWorkflow`` through each ``RunActivity``. By default spans are created but
not exported; ``AGENTFLOW_OTEL_CONSOLE=1`` prints them, and any OTLP exporter can be added to the
provider this returns.
"""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor


def configure_tracing(service_name: str) -> TracerProvider:
    """Install a global tracer provider named ``service_name`` (idempotent per process).

    Returns:
        The provider, so callers can attach exporters.
    """
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if os.environ.get("AGENTFLOW_OTEL_CONSOLE"):
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider
