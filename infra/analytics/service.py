"""The analytics runner and rate limiter as the API uses them, built from the settings."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from core.catalog import ModelCatalog
from core.settings import Settings
from infra.analytics.limiter import AnalyticsRateLimiter
from infra.analytics.models import Period, Report
from infra.analytics.runner import AnalyticsRunner, Answer
from infra.redis_client import RedisClients


@dataclass
class AnalyticsService:
    """What the API's analytics routes share: the per-key limit, then the runner."""

    runner: AnalyticsRunner
    limiter: AnalyticsRateLimiter

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        engine: Engine,
        catalog: ModelCatalog,
        redis: RedisClients | None = None,
    ) -> AnalyticsService:
        """The service with the ``analytics_*`` settings, on the settings' database.

        The limiter uses ``redis`` (the process's shared pool and breaker) when given, else
        clients of its own on the settings' Redis.
        """
        runner = AnalyticsRunner(
            engine,
            settings.database_url,
            catalog,
            cache_ttl_s=settings.analytics_cache_ttl_s,
            max_concurrent=settings.analytics_workers,
            executor=settings.analytics_executor,
            nice=settings.analytics_nice,
        )
        limiter = AnalyticsRateLimiter(
            redis if redis is not None else settings.redis_url,
            settings.analytics_rate_limit_per_minute,
            timeout_s=settings.redis_timeout_s,
        )
        return cls(runner, limiter)

    async def answer(
        self, key_id: str, report: Report, period: Period, owner: str | None
    ) -> Answer:
        """Count the request against ``key_id``'s analytics limit, then get the answer.

        Args:
            key_id: the calling key (its limit is counted).
            report: which figures.
            period: which window.
            owner: whose jobs count (``None``: every job).

        Raises:
            AnalyticsRateLimitedError: over the key's limit (429); nothing is computed.
            StoreUnavailableError: the database is down (503).
            AnalyticsUnavailableError: the analytics process died (503).
        """
        await self.limiter.hit(key_id)
        return await self.runner.get(report, period, owner)

    async def aclose(self) -> None:
        """Stop the runner and close the limiter's connections."""
        await self.runner.aclose()
        await self.limiter.aclose()
