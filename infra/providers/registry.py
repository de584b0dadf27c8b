"""Finds the provider for a catalog entry and owns the providers' clients."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeGuard

from core.catalog import ModelSpec
from core.providers import ModelProvider
from infra.providers.simulated import SimulatedProvider

if TYPE_CHECKING:  # the openai SDK (about a second of start-up) loads only for a real endpoint
    from core.settings import Settings
    from infra.providers.openai import OpenAICompatibleProvider


class ProviderRegistry:
    """Finds the provider for a catalog entry and owns the providers' clients.

    ``openai`` specs without their own ``base_url``/``api_key`` use the registered ``openai``
    provider, or one built lazily from the default endpoint. A spec with its own ``base_url`` gets
    its own :class:`OpenAICompatibleProvider` (one per ``(base_url, api_key)``, reused), and never
    receives the default API key: that key is only sent to the default endpoint.
    """

    def __init__(
        self,
        providers: dict[str, ModelProvider],
        *,
        openai_timeout_s: float = 60.0,
        openai_base_url: str | None = None,
        openai_api_key: str | None = None,
    ) -> None:
        """Create the registry.

        Args:
            providers: provider kind name (``simulated``, ``openai`` or a custom name) to provider.
            openai_timeout_s: request timeout in seconds for OpenAI-compatible providers built here.
            openai_base_url: default endpoint for ``openai`` specs (``OPENAI_BASE_URL``).
            openai_api_key: API key for the default endpoint (``OPENAI_API_KEY``).
        """
        self._providers = dict(providers)
        self._openai_timeout_s = openai_timeout_s
        self._openai_base_url = openai_base_url
        self._openai_api_key = openai_api_key
        self._openai: dict[tuple[str, str | None], OpenAICompatibleProvider] = {}
        registered = self._providers.get("openai")
        if registered is not None and _is_openai(registered):
            self._openai[(registered.base_url, registered.api_key)] = registered

    @classmethod
    def from_settings(cls, settings: Settings) -> ProviderRegistry:
        """The registry the settings describe.

        Registers ``simulated`` (with ``simulated_latency_scale``) and, when ``openai_base_url``
        is set, ``openai`` (with ``openai_api_key`` and ``model_timeout_s``).
        """
        providers: dict[str, ModelProvider] = {
            "simulated": SimulatedProvider(settings.simulated_latency_scale)
        }
        if settings.openai_base_url:
            from infra.providers.openai import OpenAICompatibleProvider

            providers["openai"] = OpenAICompatibleProvider(
                settings.openai_base_url, settings.openai_api_key, settings.model_timeout_s
            )
        return cls(
            providers,
            openai_timeout_s=settings.model_timeout_s,
            openai_base_url=settings.openai_base_url,
            openai_api_key=settings.openai_api_key,
        )

    def _openai_provider(self, base_url: str, api_key: str | None) -> OpenAICompatibleProvider:
        key = (base_url, api_key)
        provider = self._openai.get(key)
        if provider is None:
            from infra.providers.openai import OpenAICompatibleProvider

            provider = OpenAICompatibleProvider(base_url, api_key, self._openai_timeout_s)
            self._openai[key] = provider
        return provider

    def for_spec(self, spec: ModelSpec) -> ModelProvider:
        """The provider that serves ``spec``.

        Raises:
            ValueError: an ``openai`` spec has no ``base_url`` and ``OPENAI_BASE_URL`` is not set,
                or no provider is registered under ``spec.provider``.
        """
        if spec.provider == "openai":
            if spec.base_url is not None:
                return self._openai_provider(spec.base_url, spec.api_key)
            if spec.api_key is None and "openai" in self._providers:
                return self._providers["openai"]
            if self._openai_base_url is None:
                raise ValueError(
                    f"model {spec.model_id} ({spec.tier.value}) uses provider 'openai' but "
                    "OPENAI_BASE_URL is not set and the catalog entry has no base_url"
                )
            return self._openai_provider(
                self._openai_base_url, spec.api_key or self._openai_api_key
            )
        provider = self._providers.get(spec.provider)
        if provider is None:
            raise ValueError(
                f"model {spec.model_id} ({spec.tier.value}) uses provider {spec.provider!r}, "
                f"which is not registered (known: {sorted(self._providers)})"
            )
        return provider

    async def aclose(self) -> None:
        """Close every provider that holds connections (each once)."""
        seen: set[int] = set()
        for provider in [*self._providers.values(), *self._openai.values()]:
            if id(provider) in seen:
                continue
            seen.add(id(provider))
            close = getattr(provider, "aclose", None)
            if close is not None:
                await close()


def _is_openai(provider: ModelProvider) -> TypeGuard[OpenAICompatibleProvider]:
    from infra.providers.openai import OpenAICompatibleProvider

    return isinstance(provider, OpenAICompatibleProvider)
