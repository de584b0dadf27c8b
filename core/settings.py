"""Settings from environment variables (and an optional ``.env`` file), validated at start-up.

Well-known variables keep their usual names (``TEMPORAL_ADDRESS``, ``REDIS_URL``, ``DATABASE_URL``,
``OPENAI_BASE_URL``, ``OPENAI_API_KEY``); everything else is prefixed ``AGENTFLOW_``. Bad
configuration fails at start-up with a message naming the setting. Workflow code never reads
settings: what it needs travels in :class:`core.models.AgentWorkflowInput`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
"""The checkout root (for ``data/`` and ``examples/`` in a development install)."""


MAX_APPROVAL_REMINDERS = 500
"""Most reminders one wait may send: each is a timer and a workflow task (about 5 history
events), so 500 stay far below Temporal's 51,200-event history limit."""


class Settings(BaseSettings):
    """agentflow configuration. Every field can be set through the environment."""

    # hide_input_in_errors: a refused value never reaches the error text (a mistyped
    # DATABASE_URL or REDIS_URL carries its password, and start-up errors go to logs).
    model_config = SettingsConfigDict(
        env_prefix="AGENTFLOW_",
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
        hide_input_in_errors=True,
    )

    temporal_address: str | None = Field(
        default=None,
        validation_alias=AliasChoices("TEMPORAL_ADDRESS", "AGENTFLOW_TEMPORAL_ADDRESS"),
    )
    """host:port of the Temporal frontend (gRPC); unset: the envconfig profile's address, else
    127.0.0.1:7233. The one owner of ``TEMPORAL_ADDRESS``: the client (``infra.temporal``) and
    ``agentflow dev`` read this field, never the variable. API key, TLS and profiles come from
    ``temporalio.envconfig`` (``TEMPORAL_API_KEY``, ``TEMPORAL_TLS*``, ``TEMPORAL_PROFILE``,
    ``TEMPORAL_CONFIG_FILE``)."""
    temporal_namespace: str = Field(
        default="default",
        validation_alias=AliasChoices("TEMPORAL_NAMESPACE", "AGENTFLOW_TEMPORAL_NAMESPACE"),
    )
    """Temporal namespace the workflows run in."""
    tracing: bool = False
    """Build OpenTelemetry spans for every workflow, activity and Temporal client call
    (Temporal's ``OpenTelemetryPlugin``, one trace from the HTTP request to the last activity).
    Off by default because nothing exports spans unless an exporter is added: unread spans cost
    about 12 ms of worker CPU per job. ``AGENTFLOW_OTEL_CONSOLE=1`` prints spans and turns this
    on."""
    otel_console: bool = False
    """Print every span to stdout (implies ``tracing``)."""
    workflow_sandbox: bool = True
    """Run workflow code in Temporal's sandbox. ``false`` saves about 15-20 ms of worker CPU per
    job but no longer catches non-deterministic calls at run time (the replay tests still guard
    code changes)."""
    temporal_ui_url: str = "http://127.0.0.1:8233"
    """Base URL of the Temporal Web UI, used to build links to each job's workflow."""
    task_queue: str = "agentflow"
    """Task queue shared by the API (starts workflows) and the worker (polls it)."""

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("REDIS_URL", "AGENTFLOW_REDIS_URL"),
    )
    """Redis for the response cache and the tool-result cache."""
    redis_timeout_s: float = 0.5
    """Socket timeout for cache calls in seconds; a slow or down Redis is treated as a miss."""
    database_url: str = Field(
        default=f"sqlite:///{PROJECT_ROOT / 'data' / 'agentflow.db'}",
        validation_alias=AliasChoices("DATABASE_URL", "AGENTFLOW_DATABASE_URL"),
    )
    """SQLAlchemy URL of the job database (SQLite file by default; PostgreSQL in production,
    e.g. ``postgresql+psycopg://user@host:5432/db``)."""

    catalog_file: Path | None = None
    """Optional JSON file replacing the default model catalog (see :mod:`core.catalog`)."""
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_BASE_URL", "AGENTFLOW_OPENAI_BASE_URL")
    )
    """Base URL of an OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp server)."""
    openai_api_key: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY", "AGENTFLOW_OPENAI_API_KEY")
    )
    """API key for that endpoint (local servers accept any non-empty value)."""
    model_timeout_s: float = Field(default=60.0, gt=0)
    """Default HTTP timeout of the OpenAI-compatible client, in seconds. Each generation call
    uses its tier's attempt timeout instead (``max_tokens / tokens_per_second`` with a margin, or
    the catalog entry's ``request_timeout_s``)."""
    planner_timeout_s: float = Field(default=8.0, gt=0, le=20)
    """How long the model planner may take before the rules planner plans instead, in seconds
    (at most 20: the planning stage's own timeout is 30 s)."""
    router: Literal["learned", "cue", "llm"] = "learned"
    """Who picks the tier: ``learned`` (the calibrated classifier shipped in
    ``core/data/router.json``), ``cue`` (the seed's keyword table, the old baseline) or ``llm``
    (the small tier classifies the prompt when it is a real model, falling back to ``learned``
    on any failure). See :mod:`domain.routing`."""
    router_large_threshold: float | None = Field(default=None, gt=0, lt=1)
    """The cost/quality knob: the learned router sends a prompt to the large tier when
    P(needs large) is above it. Lower sends more prompts to large (higher recall of prompts that
    need it, higher cost). Unset: the operating point recommended by the artifact.
    ``agentflow router calibrate`` prints the curve on the held-out split."""
    router_small_threshold: float = Field(default=0.5, gt=0, lt=1)
    """Below the large threshold, the learned router sends a prompt to the small tier when
    P(small suffices) is above this, else to medium."""
    router_tool_answered_max_p_large: float = Field(default=1.0, ge=0, le=1)
    """Routing after planning: when every planned tool answers the question (calculator, SQL,
    docs search, page fetch) and the prompt does not ask to derive something (solve, prove,
    write or fix code, pasted code: ``domain.routing.asks_to_derive``), the small tier
    reports the tool's result unless P(needs large) is above this. 1.0 (the default) always
    lets such a tool answer: the model reads "Compute (1250.50 * 12) / 7" as math (P(large)
    0.91), which is what the calculator makes cheap. 0 turns the rule off."""
    router_llm_timeout_s: float = Field(default=3.0, gt=0, le=5)
    """How long the LLM router's classification may take before the learned router decides,
    in seconds (at most 5: planning and selection share one 30 s stage)."""
    router_artifact: Path | None = None
    """A router artifact to load instead of the shipped one (an operator's retrained model;
    JSON only)."""
    activity_heartbeat_timeout_s: float = Field(default=10.0, ge=1, le=300)
    """Heartbeat timeout of model and tool activities, in seconds: a worker that dies mid-call is
    noticed this fast and the call retried elsewhere."""
    simulated_latency_scale: float = Field(default=1.0, ge=0.0)
    """Multiplier on simulated latency: 1.0 honours each tier's tokens/s, 0 is instant."""

    response_cache_ttl_s: int = Field(default=3600, gt=0)
    """How long a final answer stays in the response cache, in seconds. An answer built on tool
    results lives at most as long as the shortest TTL of those tools."""
    response_cache_max_bytes: int = Field(default=64 * 2**20, ge=2**16)
    """Byte limit of the response level (keys and values); the entries closest to expiry are
    evicted first once it is reached."""
    semantic_cache: bool = False
    """Serve an earlier answer to a query asked in other words (see :mod:`infra.semantic`).
    Off by default, so the default set-up never serves another question's answer: a hit needs
    a similar embedding and the same content words in the same order (only framing, function
    words, casing and punctuation may differ), which gives no wrong hit on the held-out
    near-miss split (``data/semantic/``) but also few hits beyond the exact response level."""
    semantic_cache_threshold: float = Field(default=0.9, gt=0, le=1)
    """Cosine similarity at or above which a cached query counts as the same question (the
    wrong-hit guard must pass too)."""
    semantic_cache_ttl_s: int = Field(default=3600, gt=0)
    """How long a semantic entry (a pointer to a response entry) lives, in seconds."""
    semantic_cache_max_entries: int = Field(default=2000, ge=10, le=5000)
    """Most queries the semantic level keeps per owner and inputs; the nearest-neighbour search
    is a numpy matrix product over them (about 4 KiB each in Redis with the lexical embedding;
    a process's first lookup of a namespace reads its whole stream, 0.3 s at 2,000)."""
    semantic_cache_max_bytes: int = Field(default=32 * 2**20, ge=2**16)
    """Byte limit of the semantic level in Redis (its streams, tracked by size)."""
    embeddings_model: str | None = None
    """Model id of the OpenAI-compatible embeddings endpoint (``OPENAI_BASE_URL``); unset: the
    offline lexical embedding (character n-grams hashed by scikit-learn), labelled as such."""
    tool_cache_max_bytes: int = Field(default=128 * 2**20, ge=2**16)
    """Byte limit of the tool-result level (each tool's TTL comes from its metadata)."""
    component_cache_ttl_s: int = Field(default=3600, gt=0)
    """How long compression outputs stay cached, in seconds."""
    component_cache_max_bytes: int = Field(default=32 * 2**20, ge=2**16)
    """Byte limit of the component level."""
    coalesce_lease_s: float = Field(default=10.0, gt=0, le=300)
    """Lease of a coalescing lock: the worker running a shared tool call or generation renews it
    every third of this; when it dies, waiters run the work themselves within about this long."""
    retention_days: float = Field(default=30.0, gt=0)
    """Job records, stored payloads and blobs older than this many days are deleted by the
    retention schedule (it must exceed the longest job plus Temporal's history retention)."""
    retention_interval_s: float = Field(default=3600.0, ge=60)
    """How often the retention schedule runs, in seconds."""
    retention_batch_size: int = Field(default=500, ge=1, le=10000)
    """Rows deleted per database transaction by the retention workflow."""
    worker_metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """Port of the worker's Prometheus ``/metrics`` (agentflow's metrics); unset: not served."""
    temporal_metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """Port of the Temporal SDK's own Prometheus metrics (its Rust core's runtime option)."""
    log_format: Literal["text", "json"] = "text"
    """``json``: one JSON object per log line with job id, workflow id and trace id."""
    approval_timeout_s: float = Field(default=24 * 3600, gt=0)
    """How long a job waits for an approval before the timeout action applies, in seconds."""
    approval_timeout_action: Literal["expire", "proceed"] = "expire"
    """What the approval timeout does: ``expire`` ends the job as EXPIRED; ``proceed`` runs it
    without the calls that needed approval (each recorded as ``not_approved``)."""
    approval_tools: list[str] = Field(default_factory=list)
    """Tools whose calls always need a reviewer's approval (JSON list in the env, e.g.
    ``["sql_query"]``), beyond the tools whose metadata requires it."""
    approval_cost_threshold_usd: float | None = Field(default=None, ge=0)
    """A job whose estimated remaining cost (draft and final answer on the chosen tier) is above
    this many USD waits for approval; unset: cost never gates a job."""
    approval_reminder_s: float | None = Field(default=None, gt=0)
    """While a job waits for approval, publish an ``approval_reminder`` event this often, in
    seconds; unset: no reminders."""

    stream_tokens: bool = True
    """Stream each final answer as ``token`` events on the job's Redis token stream
    (:mod:`infra.token_channel`; no history cost); ``false`` publishes only the whole answer in
    ``final_response``."""
    stream_token_batch_ms: float = Field(default=50.0, gt=0, le=5000)
    """A ``token`` event holds the text produced in at most this many milliseconds..."""
    stream_token_batch_tokens: int = Field(default=32, ge=1, le=4096)
    """...or at most this many provider deltas (about one token each), whichever comes first."""
    stream_poll_ms: float = Field(default=150.0, ge=10, le=10_000)
    """How often the API's event hub reads a running job's durable events (one query per job
    per API process, whatever the number of readers; a query adds nothing to history), in
    ms. Token events arrive at once through Redis."""
    sse_linger_s: float = Field(default=30.0, ge=0, le=3600)
    """How long the event hub keeps a job's events in memory after its last reader left or
    it ended, in seconds, for readers that reconnect."""
    sse_max_readers_per_job: int = Field(default=1000, ge=1, le=100_000)
    """Most concurrent SSE readers of one job per API process; more get 429."""
    sse_keepalive_s: float = Field(default=15.0, gt=0, le=300)
    """``GET /v1/jobs/{id}/events`` sends an SSE comment this often while no event arrives, so
    proxies keep the connection open."""
    search_attributes: Literal["auto", "on", "off"] = "auto"
    """Upsert the ``Agent*`` custom search attributes on each job (:mod:`core.search_attributes`).
    ``auto``: when the API finds them registered in the namespace at start-up (``agentflow dev``
    registers them); ``on``: always (submissions fail with 503 naming the missing attributes and the
    command that registers them); ``off``:
    never."""
    large_payload_threshold_bytes: int = Field(default=32 * 1024, gt=0)
    """Context items and tool results larger than this go to the blob store, passed by reference."""
    max_request_bytes: int = Field(default=1024 * 1024, gt=0)
    """Largest accepted request body for the REST API; larger bodies get 413."""
    max_job_input_bytes: int = Field(default=1024 * 1024, gt=0)
    """Largest accepted job input (the request as the workflow carries it, JSON-encoded, in
    bytes); larger requests get 413 naming this limit and start nothing."""
    decision_wait_s: float = Field(default=30.0, gt=0, le=600)
    """How long ``POST /v1/jobs/{id}/approval`` waits for a worker to take the decision (for
    example while workers restart) before answering 503; a retry with the same body returns the
    same outcome."""
    sticky_queue_timeout_s: float = Field(default=10.0, gt=0, le=300)
    """How long a workflow task waits on a worker's sticky queue before any worker may take it,
    in seconds (Temporal's ``sticky_queue_schedule_to_start_timeout``): after a worker dies, its
    open jobs resume elsewhere this much later. Lower means faster recovery and more replays
    when a live worker is briefly slow."""
    progress_query_timeout_s: float = Field(default=5.0, gt=0, le=60)
    """How long a read of a running job (``GET /v1/jobs/{id}``, and the ownership check of a
    decision or cancel) waits for a worker to answer its progress query before answering from
    the job record instead, in seconds."""
    default_max_context_tokens: int = Field(default=4000, gt=0)
    """Token budget for context when a request names none."""

    http_allowed_hosts: list[str] = Field(default_factory=list)
    """``host:port`` entries the ``http_get`` tool may fetch from (JSON list in the env, e.g.
    ``["docs.python.org:443"]``); a bare host means ports 80 and 443. Empty: ``http_get`` refuses
    every URL."""
    http_allowed_networks: list[str] = Field(default_factory=list)
    """CIDRs of non-public addresses ``http_get`` may still connect to when the host is
    allowlisted (e.g. ``["127.0.0.1/32"]`` for a local docs server). Loopback, private,
    link-local, multicast and cloud-metadata addresses are refused unless listed here; metadata
    addresses are refused always."""
    http_max_bytes: int = Field(default=256 * 1024, gt=0)
    """Largest body ``http_get`` reads; longer bodies are cut and marked truncated."""
    http_timeout_s: float = Field(default=10.0, gt=0)
    """Timeout of one ``http_get`` request in seconds."""
    sql_database_path: Path = PROJECT_ROOT / "data" / "shop.sqlite"
    """SQLite database the ``sql_query`` tool reads (opened read-only)."""
    sql_max_rows: int = Field(default=200, gt=0)
    """Most rows ``sql_query`` returns."""
    sql_max_result_bytes: int = Field(default=256 * 1024, gt=0)
    """Most bytes of cell data one ``sql_query`` result may hold; the result is cut (and marked
    truncated) at this size."""
    sql_max_cell_bytes: int = Field(default=16 * 1024, gt=0)
    """Largest string or blob SQLite may build while running a ``sql_query`` statement (its
    ``SQLITE_LIMIT_LENGTH``); a statement that builds a bigger value fails with a clear error."""

    auth_disabled: bool = False
    """Switch API-key authentication off. For local development only: every caller then acts
    as an ``admin`` key named ``anonymous``, and ``agentflow dev`` says so on every start."""
    api_key_pepper: SecretStr | None = None
    """Server secret mixed into the HMAC-SHA256 of every stored API key. Set it in production
    (keys created under one pepper stop working under another); unset, keys are hashed with
    SHA-256 alone."""
    rate_limit_per_minute: int = Field(default=120, ge=1)
    """Requests per minute one API key may make to submitting routes (keys may carry their own
    limit); the next one gets 429 with ``Retry-After``."""
    daily_budget_usd: float = Field(default=5.0, ge=0)
    """What one API key's jobs may cost per UTC day, in USD (keys may carry their own budget).
    A submission whose estimated cost does not fit what is left gets 402."""
    analytics_rate_limit_per_minute: int = Field(default=30, ge=1)
    """Analytics requests (``/v1/metrics/*``, ``GET /v1/cache/stats``) one API key may make per
    minute, counted apart from its submissions; the next one gets 429 with ``Retry-After``."""
    analytics_cache_ttl_s: float = Field(default=15.0, ge=0, le=3600)
    """How long a computed analytics answer is served again for the same key, report and period,
    in seconds: analytics may be this stale. 0: no cache (concurrent identical requests still
    share one computation)."""
    analytics_executor: Literal["process", "thread"] = "process"
    """Where analytics are computed: ``process`` (a separate process, so their CPU never holds
    the API's GIL) or ``thread`` (a thread of the API process; in-memory SQLite always uses it)."""
    analytics_workers: int = Field(default=1, ge=1, le=16)
    """Analytics computations at once per API process (processes or threads); the others wait."""
    analytics_nice: int = Field(default=10, ge=0, le=19)
    """CPU niceness added to the analytics process, so requests of the API come first."""

    payload_encryption_keys: dict[str, SecretStr] = Field(default_factory=dict)
    """AES-256-GCM keys for Temporal payloads, by key id (JSON object in the env:
    ``{"k1": "<base64 of 32 bytes>"}``). Empty: payloads are stored unencrypted."""
    payload_encryption_key_id: str | None = None
    """Which of ``payload_encryption_keys`` encrypts new payloads (the others still decrypt old
    ones, for rotation); unset with one key configured: that key."""
    codec_cors_origins: list[str] = Field(
        default_factory=lambda: ["http://127.0.0.1:8233", "http://localhost:8233"]
    )
    """Origins allowed to call the codec server endpoints (the Temporal Web UI's address)."""

    api_host: str = "127.0.0.1"
    """Address the API binds to."""
    api_port: int = 8000
    """Port the API binds to."""
    data_dir: Path = PROJECT_ROOT / "data"
    """Folder for the dev stack's state (Temporal database, SQLite files, logs)."""

    @property
    def tracing_enabled(self) -> bool:
        """Whether spans are built: ``tracing`` or ``otel_console``."""
        return self.tracing or self.otel_console

    @model_validator(mode="after")
    def _reminders_fit_the_history(self) -> Settings:
        reminder = self.approval_reminder_s
        if reminder is not None and self.approval_timeout_s / reminder > MAX_APPROVAL_REMINDERS:
            raise ValueError(
                f"AGENTFLOW_APPROVAL_REMINDER_S={reminder:g} would send more than "
                f"{MAX_APPROVAL_REMINDERS} reminders within AGENTFLOW_APPROVAL_TIMEOUT_S="
                f"{self.approval_timeout_s:g} (each costs a timer and a workflow task in the "
                "job's history); use at least "
                f"{self.approval_timeout_s / MAX_APPROVAL_REMINDERS:g} s"
            )
        return self

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite", "postgresql")):
            raise ValueError("DATABASE_URL must be a sqlite:// or postgresql+psycopg:// URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _known_redis(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("REDIS_URL must start with redis://, rediss:// or unix://")
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
