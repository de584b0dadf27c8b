"""Process-wide resources of the API, opened in the app's lifespan."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import timedelta

from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from api.errors import ApiError, TemporalUnavailableError
from api.event_hub import EventHub
from core import search_attributes
from core.catalog import ModelCatalog
from core.models import CacheLevel
from core.settings import Settings
from core.tools import ToolRegistry
from infra.cache import RedisCache, semantic_from_settings
from infra.jobs import JobStore
from infra.keys import KeyStore
from infra.quotas import Quotas
from infra.temporal import AgentflowPlugin, connect, temporal_target

log = logging.getLogger(__name__)

SEARCH_ATTRIBUTES_LIST_TIMEOUT_S = 5.0
"""How long listing the namespace's search attributes may take, in seconds."""


class SearchAttributesMissingError(ApiError):
    """``AGENTFLOW_SEARCH_ATTRIBUTES=on`` but the namespace lacks some ``Agent*`` attributes (503).

    Attributes:
        missing: names of the attributes not registered, or registered with another type.
    """

    status_code = 503

    def __init__(self, message: str, missing: list[str]) -> None:
        """Create the error; ``message`` names the attributes and the command that adds them."""
        super().__init__(message)
        self.missing = missing


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
    _search_attributes: bool | None = None
    _search_attributes_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

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

    async def search_attributes_enabled(self) -> bool:
        """Whether jobs set the ``Agent*`` search attributes (:mod:`core.search_attributes`).

        Decided once per process, the first time it is asked after Temporal answers, from
        ``AGENTFLOW_SEARCH_ATTRIBUTES``: ``off`` is ``False`` without asking Temporal; ``auto``
        is ``True`` when the namespace has every attribute registered with its type; ``on`` is
        ``True`` and an error while any is missing. The answer is cached, except the error
        (registering the attributes later then takes effect without a restart) and a failure to
        reach Temporal. When the namespace's attributes cannot be listed at all (the operator
        API refused or not implemented), ``auto`` is ``False`` and ``on`` trusts the setting.

        Returns:
            ``True`` when the jobs this API starts should set them.

        Raises:
            TemporalUnavailableError: Temporal cannot be reached (503; asked again next time).
            SearchAttributesMissingError: ``on``, and some attributes are not registered (503);
                the message names them and the ``temporal operator search-attribute create``
                command.
        """
        mode = self.settings.search_attributes
        if mode == "off":
            return False
        if self._search_attributes is not None:
            return self._search_attributes
        client = await self.client()
        async with self._search_attributes_lock:
            if self._search_attributes is None:
                self._search_attributes = await self._detect_search_attributes(client, mode)
            return self._search_attributes

    async def _detect_search_attributes(self, client: Client, mode: str) -> bool:
        namespace = client.namespace
        try:
            listed = await client.operator_service.list_search_attributes(
                ListSearchAttributesRequest(namespace=namespace),
                timeout=timedelta(seconds=SEARCH_ATTRIBUTES_LIST_TIMEOUT_S),
            )
        except RPCError as exc:
            if exc.status not in (RPCStatusCode.UNIMPLEMENTED, RPCStatusCode.PERMISSION_DENIED):
                log.warning("could not list the search attributes of %s: %s", namespace, exc)
                raise TemporalUnavailableError("Temporal did not answer; try again") from exc
            # Some servers (the time-skipping test server) and some permission setups refuse
            # the operator API: nothing to check against.
            log.warning(
                "cannot list the search attributes of namespace %s (%s); "
                "AGENTFLOW_SEARCH_ATTRIBUTES=%s: jobs %s set them",
                namespace,
                exc.status.name if exc.status else exc,
                mode,
                "will" if mode == "on" else "will not",
            )
            return mode == "on"
        lacking = search_attributes.missing(listed.custom_attributes)
        if not lacking:
            log.info("search attributes registered in %s: jobs set them", namespace)
            return True
        names = search_attributes.describe(lacking)
        wrong = [k.name for k in lacking if k.name in listed.custom_attributes]
        fix = search_attributes.create_command(namespace, lacking)
        if wrong:
            fix += f" (remove {', '.join(wrong)} first: registered with another type)"
        if mode == "auto":
            log.warning(
                "namespace %s lacks search attributes %s: jobs will not set them (so "
                "`GET /v1/jobs?status=` reads the job database only); register them with: %s",
                namespace,
                names,
                fix,
            )
            return False
        message = (
            f"AGENTFLOW_SEARCH_ATTRIBUTES=on but namespace {namespace} lacks search attributes "
            f"{names}; register them with: {fix}"
        )
        log.error("%s", message)
        raise SearchAttributesMissingError(message, [k.name for k in lacking])


@dataclass
class AppState:
    """Everything the routes share.

    Settings, store, cache, tool registry, catalog, Temporal, API keys, the per-key quotas and
    the event hub that every SSE reader of this process shares (:mod:`api.event_hub`).
    """

    settings: Settings
    store: JobStore
    cache: RedisCache
    tools: ToolRegistry
    catalog: ModelCatalog
    temporal: TemporalGateway
    keys: KeyStore
    quotas: Quotas
    event_hub: EventHub

    async def semantic_clear(self, namespace_prefix: str | None) -> int:
        """Delete the semantic entries whose namespace starts with ``namespace_prefix``.

        A namespace is ``<key id>:<inputs digest>``; ``None`` deletes all. Returns how many
        entries were deleted.

        Raises:
            RedisError, OSError: Redis is down.
        """
        # clear() scans every embedder's streams; the lexical one opens no client to close.
        settings = self.settings.model_copy(
            update={"semantic_cache": True, "embeddings_model": None}
        )
        semantic = semantic_from_settings(settings, self.cache)
        assert semantic is not None
        deleted = await semantic.clear(namespace_prefix)
        await self.cache.prune_level(CacheLevel.SEMANTIC)  # the byte count follows
        return deleted
