"""Prometheus metrics of the API and the worker (``prometheus-client``), and the SDK's own.

Each process keeps one :class:`Metrics` (its own ``CollectorRegistry``, not the library's global
one, so tests build fresh ones); :func:`default_metrics` is the process's, and the module-level
functions (:func:`observe_job`, :func:`observe_cache`, ...) record into it. The API serves it at
``/metrics`` (:mod:`api.routes.prometheus`); the worker serves it on
``AGENTFLOW_WORKER_METRICS_PORT`` (:func:`serve_worker_metrics`), and the Temporal SDK's own worker
and client metrics (its Rust core) on ``AGENTFLOW_TEMPORAL_METRICS_PORT``
(:func:`temporal_runtime`).

Hazards this module handles:

- **Label cardinality.** A label value Prometheus has seen lives in its time-series database
  for good, so no label carries a job id, an owner, a query or a raw URL path: statuses, stages
  and tiers are enums, cache levels and outcomes are checked against fixed sets (anything else
  is counted under ``other``, with a warning), HTTP routes are route templates
  (``/v1/jobs/{job_id}``) and unmatched paths share one label.
- **Retried activities.** ``record_job`` is retried until the database takes the write, so
  :func:`observe_job` remembers the ``(job id, status)`` pairs it recorded (a bounded LRU) and
  counts each once per process. A retry that lands on another worker counts again there.
- **The SDK's runtime.** Temporal's Prometheus endpoint belongs to a ``Runtime``, which must
  outlive every client and worker built on it; :func:`temporal_runtime` makes one per address
  and keeps it for the life of the process.

One module on purpose (about 450 lines): one registry and the functions that record into it;
splitting the metric definitions from their recorders would put each name in two places.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from core.models import AgentResult, CacheLevel

log = logging.getLogger(__name__)

CACHE_LEVELS = frozenset(level.value for level in CacheLevel)
"""Values of the ``level`` label of the cache metrics."""

CACHE_OUTCOMES = frozenset({"hit", "miss", "error", "skipped"})
"""Values of the ``outcome`` label of ``agentflow_cache_lookups_total``: ``error`` is a lookup
that reached Redis and failed, ``skipped`` one answered at once because the breaker was open."""

OTHER = "other"
"""The label value of anything outside a fixed set (a programming error, never a user's input)."""

UNMATCHED_ROUTE = "unmatched"
"""The ``route`` label of requests no route matched (scanners, typos): one series for all."""

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Methods counted under their own name; any other is counted as ``other``."""

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Histogram buckets of stage and HTTP latencies, in seconds (5 ms to 30 s, then ``+Inf``)."""

JOB_BUCKETS_S = (*LATENCY_BUCKETS_S[3:], 60.0, 300.0, 1800.0, 3600.0, 86400.0)
"""Histogram buckets of whole-job durations, in seconds: a job that waits for an approval can
take a day (the default approval timeout)."""

RECORDED_JOBS_REMEMBERED = 10_000
"""How many ``(job id, status)`` pairs :meth:`Metrics.observe_job` remembers to skip retries."""


class Metrics:
    """agentflow's metrics on one registry.

    Attributes:
        registry: the ``CollectorRegistry`` every metric below is registered on.
        jobs: ``agentflow_jobs_total{status}``, jobs whose record reached each status, as
            recorded by this process (``RUNNING`` is a started job; the terminal statuses are the
            outcomes).
        jobs_submitted: ``agentflow_jobs_submitted_total``, jobs the API started (idempotent
            repeats not counted).
        stage_duration: ``agentflow_stage_duration_seconds{stage}``, workflow time per stage of
            each terminal job.
        job_duration: ``agentflow_job_duration_seconds``, the sum of a terminal job's stage times.
        tokens: ``agentflow_tokens_total{tier,kind}``, model tokens (``kind`` ``prompt`` or
            ``completion``) of terminal jobs.
        cost: ``agentflow_cost_usd_total{tier}``, model cost in USD of terminal jobs.
        cache_lookups: ``agentflow_cache_lookups_total{level,outcome}``.
        cache_degraded: ``agentflow_cache_degraded``, 1 while this process finds Redis
            unreachable, else 0.
        coalesced: ``agentflow_coalesced_total{level}``, tool calls or generations not run
            because an identical one in flight shared its result.
        http_requests: ``agentflow_http_requests_total{route,method,status}`` (API).
        http_duration: ``agentflow_http_request_duration_seconds{route}`` (API), until the
            response's last byte (a server-sent event stream counts as long as it stays open).
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, *, process_metrics: bool = False
    ) -> None:
        """Create the metrics on ``registry`` (default: a new one).

        Args:
            registry: where to register; a registry already holding these names raises.
            process_metrics: also register the process, platform and garbage-collector
                collectors (``process_cpu_seconds_total``, ``python_info``, ...).

        Raises:
            ValueError: ``registry`` already has a metric of one of these names.
        """
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        if process_metrics:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        self.jobs = Counter(
            "agentflow_jobs", "Jobs whose record reached each status.", ["status"], registry=r
        )
        self.jobs_submitted = Counter(
            "agentflow_jobs_submitted", "Jobs started through the API.", registry=r
        )
        self.stage_duration = Histogram(
            "agentflow_stage_duration_seconds",
            "Workflow time of each stage of terminal jobs.",
            ["stage"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.job_duration = Histogram(
            "agentflow_job_duration_seconds",
            "Workflow time of terminal jobs (the sum of their stage times).",
            buckets=JOB_BUCKETS_S,
            registry=r,
        )
        self.tokens = Counter(
            "agentflow_tokens", "Model tokens of terminal jobs.", ["tier", "kind"], registry=r
        )
        self.cost = Counter(
            "agentflow_cost_usd", "Model cost of terminal jobs in USD.", ["tier"], registry=r
        )
        self.cache_lookups = Counter(
            "agentflow_cache_lookups",
            "Cache lookups by level and outcome.",
            ["level", "outcome"],
            registry=r,
        )
        self.cache_degraded = Gauge(
            "agentflow_cache_degraded",
            "1 while Redis is unreachable from this process, else 0.",
            registry=r,
        )
        self.coalesced = Counter(
            "agentflow_coalesced",
            "Calls not run because an identical call in flight shared its result.",
            ["level"],
            registry=r,
        )
        self.http_requests = Counter(
            "agentflow_http_requests",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "agentflow_http_request_duration_seconds",
            "HTTP request latency by route template, to the response's last byte.",
            ["route"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self._lock = threading.Lock()
        self._recorded: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._degraded = False
        self._degraded_probe: Callable[[], bool] | None = None
        self._warned: set[str] = set()
        self.cache_degraded.set_function(self._degraded_value)

    # ------------------------------------------------------------------------------ jobs

    def observe_job(self, result: AgentResult) -> bool:
        """Count a recorded job projection, once per ``(job id, status)`` in this process.

        Every status counts in ``agentflow_jobs_total``; a terminal result also adds its stage
        durations (``result.timings``, milliseconds of workflow time), its job duration (their
        sum), and the tokens and cost of each model call (``result.usage``) under its tier.

        Returns:
            ``True`` when counted, ``False`` when this pair was counted before (a retried
            ``record_job``).
        """
        key = (result.job_id, result.status.value)
        with self._lock:
            if key in self._recorded:
                self._recorded.move_to_end(key)
                return False
            self._recorded[key] = None
            if len(self._recorded) > RECORDED_JOBS_REMEMBERED:
                self._recorded.popitem(last=False)
        self.jobs.labels(status=result.status.value).inc()
        if not result.status.is_terminal:
            return True
        for timing in result.timings:
            self.stage_duration.labels(stage=timing.stage.value).observe(timing.duration_ms / 1000)
        if result.timings:
            self.job_duration.observe(sum(t.duration_ms for t in result.timings) / 1000)
        for usage in result.usage:
            tier = usage.tier.value
            self.tokens.labels(tier=tier, kind="prompt").inc(max(usage.prompt_tokens, 0))
            self.tokens.labels(tier=tier, kind="completion").inc(max(usage.completion_tokens, 0))
            self.cost.labels(tier=tier).inc(max(usage.cost_usd, 0.0))
        return True

    def observe_submitted(self) -> None:
        """Count one job started through the API."""
        self.jobs_submitted.inc()

    # ------------------------------------------------------------------------------ caches

    def observe_cache(self, level: str, outcome: str) -> None:
        """Count one cache lookup.

        Args:
            level: a :class:`core.models.CacheLevel` value; anything else counts as ``other``.
            outcome: ``hit``, ``miss``, ``error`` or ``skipped``; anything else counts as
                ``other``.
        """
        self.cache_lookups.labels(
            level=self._checked("level", level, CACHE_LEVELS),
            outcome=self._checked("outcome", outcome, CACHE_OUTCOMES),
        ).inc()

    def observe_coalesced(self, level: str, count: int = 1) -> None:
        """Count ``count`` calls (default 1) served by an identical call in flight.

        Args:
            level: a :class:`core.models.CacheLevel` value (``tool`` or ``response`` in
                practice); anything else counts as ``other``.
            count: how many calls; not negative.

        Raises:
            ValueError: ``count`` is negative.
        """
        if count < 0:
            raise ValueError(f"count must not be negative, got {count}")
        self.coalesced.labels(level=self._checked("level", level, CACHE_LEVELS)).inc(count)

    def set_cache_degraded(self, degraded: bool) -> None:
        """Set ``agentflow_cache_degraded`` (a probe, when watched, takes precedence)."""
        self._degraded = degraded

    def watch_cache_degraded(self, probe: Callable[[], bool] | None) -> None:
        """Read ``agentflow_cache_degraded`` from ``probe()`` at every scrape.

        Args:
            probe: returns whether Redis is unreachable now (e.g. ``lambda: cache.breaker_open``);
                it runs on the scraping thread and must be quick and never block. ``None`` stops
                watching (the value set by :meth:`set_cache_degraded` applies again).
        """
        self._degraded_probe = probe

    def _degraded_value(self) -> float:
        probe = self._degraded_probe
        if probe is not None:
            try:
                return 1.0 if probe() else 0.0
            except Exception:  # a failing probe must not fail the scrape
                log.exception("cache-degraded probe failed")
        return 1.0 if self._degraded else 0.0

    # ------------------------------------------------------------------------------ HTTP

    def observe_http(self, route: str, method: str, status: int, duration_s: float) -> None:
        """Count one HTTP request.

        Args:
            route: the route's template (``/v1/jobs/{job_id}``) or :data:`UNMATCHED_ROUTE`;
                never a raw path.
            method: the request method; other than :data:`HTTP_METHODS`, ``other``.
            status: the response status code.
            duration_s: seconds from the request to the response's last byte.
        """
        method = method.upper()
        self.http_requests.labels(
            route=route, method=method if method in HTTP_METHODS else OTHER, status=str(status)
        ).inc()
        self.http_duration.labels(route=route).observe(max(duration_s, 0.0))

    # ------------------------------------------------------------------------------ output

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The registry in Prometheus' text format (or OpenMetrics when ``accept`` asks for it).

        Args:
            accept: the scraper's ``Accept`` header, if any.

        Returns:
            ``(body, content_type)``.
        """
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def _checked(self, name: str, value: str, allowed: frozenset[str]) -> str:
        if value in allowed:
            return value
        with self._lock:
            first = len(self._warned) < 100 and f"{name}={value}" not in self._warned
            if first:
                self._warned.add(f"{name}={value}")
        if first:
            log.warning(
                "metric label %s=%r is not one of %s; counted as %r",
                name,
                value,
                sorted(allowed),
                OTHER,
            )
        return OTHER


_default: Metrics | None = None
_default_lock = threading.Lock()


def default_metrics() -> Metrics:
    """This process's metrics (created on first use, with the process collectors)."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Metrics(process_metrics=True)
    return _default


def observe_job(result: AgentResult) -> bool:
    """:meth:`Metrics.observe_job` on this process's metrics."""
    return default_metrics().observe_job(result)


def observe_submitted() -> None:
    """:meth:`Metrics.observe_submitted` on this process's metrics."""
    default_metrics().observe_submitted()


def observe_cache(level: str, outcome: str) -> None:
    """:meth:`Metrics.observe_cache` on this process's metrics."""
    default_metrics().observe_cache(level, outcome)


def observe_coalesced(level: str, count: int = 1) -> None:
    """:meth:`Metrics.observe_coalesced` on this process's metrics."""
    default_metrics().observe_coalesced(level, count)


def set_cache_degraded(degraded: bool) -> None:
    """:meth:`Metrics.set_cache_degraded` on this process's metrics."""
    default_metrics().set_cache_degraded(degraded)


def render(accept: str | None = None) -> tuple[bytes, str]:
    """:meth:`Metrics.render` of this process's metrics: ``(body, content_type)``."""
    return default_metrics().render(accept)


# ---------------------------------------------------------------------------------- worker


@dataclass
class MetricsServer:
    """A running ``/metrics`` HTTP server (a daemon thread).

    Attributes:
        host: the address it listens on.
        port: the bound TCP port (the real one when port 0 was asked for).
    """

    host: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_worker_metrics(
    port: int, host: str = "0.0.0.0", metrics: Metrics | None = None
) -> MetricsServer:
    """Serve ``metrics`` (default: this process's) at ``http://host:port/`` (any path).

    Args:
        port: TCP port; 0 picks a free one (see :attr:`MetricsServer.port`).
        host: address to bind; the default listens on every interface, for a scraper in another
            container. Only aggregate numbers are served (no job ids, owners or queries).
        metrics: the metrics to serve.

    Raises:
        OSError: the port cannot be bound (in use, no permission).
    """
    registry = (metrics or default_metrics()).registry
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(host=host, port=int(server.server_port), _server=server, _thread=thread)


_runtimes: dict[str, Runtime] = {}
_runtimes_lock = threading.Lock()


def temporal_runtime(port: int | None, host: str = "0.0.0.0") -> Runtime | None:
    """A Temporal ``Runtime`` serving the SDK's metrics at ``http://host:port/metrics``.

    The SDK's Rust core then exports its worker and client metrics there (``temporal_request``,
    ``temporal_workflow_task_schedule_to_start_latency``, ``temporal_num_pollers``, ...). Pass it
    to ``Client.connect(runtime=...)`` (see :func:`infra.temporal.connect`); workers use their
    client's runtime. One runtime per address is made per process and kept for its whole life,
    as the SDK requires a runtime to outlive its clients.

    Args:
        port: TCP port, or ``None`` for no Prometheus runtime (returns ``None``: the SDK's
            default runtime). Port 0 binds a free port that cannot be read back: name one.
        host: address to bind (default every interface).

    Raises:
        RuntimeError: from the SDK when the address cannot be bound.
    """
    if port is None:
        return None
    address = f"{host}:{port}"
    with _runtimes_lock:
        runtime = _runtimes.get(address)
        if runtime is None:
            runtime = Runtime(
                telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=address))
            )
            _runtimes[address] = runtime
    return runtime
