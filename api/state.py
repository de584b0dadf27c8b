"""Process-wide resources of the API, opened in the app's lifespan."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from temporalio.client import Client

from api.errors import TemporalUnavailableError
from core.catalog import ModelCatalog
from core.settings import Settings
from core.tools import ToolRegistry
from infra.cache import RedisCache
from infra.jobs import JobStore
from infra.keys import KeyStore
from infra.quotas import Quotas
from infra.temporal import AgentflowPlugin, connect, temporal_target

log = logging.getLogger(__name__)


@dataclass
class TemporalGateway:
    """A Temporal client connected on first use and reconnected after a failed attempt.

    The API starts even when Temporal is down; endpoints that need it answer 503 until it is up.
    """

    settings: Settings
    plugin: AgentflowPlugin
    connect_timeout_s: float = 5.0
    _client: Client | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def client(self) -> Client:
        """The connected client.

        Raises:
            TemporalUnavailableError: the frontend did not answer within the connect timeout.
        """
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                try:
                    self._client = await asyncio.wait_for(
                        connect(self.settings, self.plugin), timeout=self.connect_timeout_s
                    )
                except (TimeoutError, RuntimeError, OSError) as exc:
                    log.warning(
                        "Temporal is unreachable at %s: %s", temporal_target(self.settings), exc
                    )
                    raise TemporalUnavailableError("Temporal is unreachable") from exc
            return self._client


@dataclass
class AppState:
    """Everything the routes share.

    Settings, store, cache, tool registry, catalog, Temporal, API keys and the per-key quotas.
    """

    settings: Settings
    store: JobStore
    cache: RedisCache
    tools: ToolRegistry
    catalog: ModelCatalog
    temporal: TemporalGateway
    keys: KeyStore
    quotas: Quotas
