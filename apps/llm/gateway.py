"""The LLM gateway: one in-process entry point for every model call.

    from apps.llm.gateway import gateway, chat_sync
    response = await gateway().chat(request, context=CallContext(organization_id=org.pk))

It resolves the model in the catalog (our names, `auto`, aliases), checks the
organization may use it and has credentials, makes (and keeps) the provider,
calls it and records in `response.route` which model served and why."""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings

from apps.llm import selectors
from apps.llm.catalog import ALIASES
from apps.llm.errors import MissingCredentials, ModelDisabled, ProviderFailed, UnknownModel
from apps.llm.providers.base import Provider, ProviderConfig, ProviderError
from apps.llm.providers.registry import make_provider
from apps.llm.selectors import ModelInfo, OrganizationConfig
from apps.llm.types import CallContext, ChatRequest, ChatResponse, EmbeddingResponse, StreamChunk

ProviderKey = tuple[str, str, str, float]


class Gateway:
    def __init__(self) -> None:
        # Providers hold SDK clients bound to an event loop: one set per loop.
        self._providers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[ProviderKey, Provider]] = (
            weakref.WeakKeyDictionary()
        )

    # --- configuration --------------------------------------------------------

    async def _catalog(self) -> dict[str, ModelInfo]:
        cached = selectors.catalog_cached()
        if cached is not None:
            return cached
        return await sync_to_async(selectors.catalog_models)()

    async def _config(self, organization_id: int) -> OrganizationConfig:
        cached = selectors.organization_config_cached(organization_id)
        if cached is not None:
            return cached
        return await sync_to_async(selectors.organization_config)(organization_id=organization_id)

    def _lookup(self, catalog: dict[str, ModelInfo], name: str) -> ModelInfo:
        model = catalog.get(ALIASES.get(name, name))
        if model is None:
            known = ", ".join(sorted(catalog)[:20])
            raise UnknownModel(f"Unknown model {name!r}. Models in the catalog: {known}.", field="model")
        return model

    def _check_usable(self, model: ModelInfo, config: OrganizationConfig) -> ProviderConfig:
        if not config.enabled(model):
            raise ModelDisabled(f"The model {model.name!r} is disabled for this organization.", field="model")
        credential = config.credential(model.provider)
        if credential is None:
            raise MissingCredentials(
                f"No {model.provider} credentials: add an API key for {model.provider} to the organization"
                " or ask the platform's operators for a default one.",
                field="model",
            )
        return ProviderConfig(
            kind=model.provider,
            api_key=credential.api_key,
            base_url=credential.base_url,
            timeout_seconds=float(getattr(settings, "LLM_TIMEOUT_SECONDS", 60)),
        )

    def _provider(self, config: ProviderConfig) -> Provider:
        loop = asyncio.get_running_loop()
        providers = self._providers.setdefault(loop, {})
        key = (config.kind, config.api_key, config.base_url, config.timeout_seconds)
        provider = providers.get(key)
        if provider is None:
            provider = providers[key] = make_provider(config)
        return provider

    async def close_loop_providers(self) -> None:
        """Close the providers made for the running loop (sync callers, before their loop ends)."""
        providers = self._providers.pop(asyncio.get_running_loop(), {})
        for provider in providers.values():
            await provider.close()

    # --- calls ----------------------------------------------------------------

    async def chat(self, request: ChatRequest, *, context: CallContext) -> ChatResponse:
        catalog = await self._catalog()
        config = await self._config(context.organization_id)
        model = self._lookup(catalog, request.model)
        provider_config = self._check_usable(model, config)
        provider = self._provider(provider_config)
        started = time.perf_counter()
        try:
            response = await provider.chat(
                replace(request, model=model.name, provider_model=model.provider_model)
            )
        except ProviderError as exc:
            raise ProviderFailed(f"{model.name}: {exc.message}", code=exc.code) from exc
        latency_ms = (time.perf_counter() - started) * 1000
        usage = response.usage
        route = {
            "model": model.name,
            "provider": model.provider,
            "reason": "requested",
            "cache": None,
            "cost_usd": model.cost(usage.input_tokens, usage.output_tokens, usage.cached_tokens),
            "latency_ms": round(latency_ms, 3),
            "attempts": [{"model": model.name, "outcome": "ok"}],
        }
        return replace(response, model=model.name, provider=model.provider, route=route)

    async def stream(self, request: ChatRequest, *, context: CallContext) -> AsyncIterator[StreamChunk]:
        catalog = await self._catalog()
        config = await self._config(context.organization_id)
        model = self._lookup(catalog, request.model)
        provider = self._provider(self._check_usable(model, config))
        try:
            async for chunk in provider.stream(
                replace(request, model=model.name, provider_model=model.provider_model)
            ):
                yield replace(chunk, model=model.name)
        except ProviderError as exc:
            raise ProviderFailed(f"{model.name}: {exc.message}", code=exc.code) from exc

    async def embed(self, model: str, inputs: list[str], *, context: CallContext) -> EmbeddingResponse:
        catalog = await self._catalog()
        config = await self._config(context.organization_id)
        info = self._lookup(catalog, model)
        provider = self._provider(self._check_usable(info, config))
        try:
            response = await provider.embed(info.provider_model, inputs)
        except ProviderError as exc:
            raise ProviderFailed(f"{info.name}: {exc.message}", code=exc.code) from exc
        return replace(response, model=info.name, provider=info.provider)

    def estimate_cost(self, request: ChatRequest, *, context: CallContext) -> dict[str, Any]:
        catalog = selectors.catalog_models()
        model = self._lookup(catalog, request.model)
        tokens_in = sum(len(message.content or "") + 16 for message in request.messages) // 4 + 1
        max_out = request.max_tokens or model.max_output_tokens
        return {
            "model": model.name,
            "input_tokens": tokens_in,
            "max_output_tokens": max_out,
            "usd_low": model.cost(tokens_in, 0),
            "usd_high": model.cost(tokens_in, max_out),
        }

    async def models(self, *, organization_id: int) -> list[dict[str, Any]]:
        catalog = await self._catalog()
        config = await self._config(organization_id)
        return [model.as_dict(enabled=config.enabled(model)) for model in catalog.values()]


_gateway: Gateway | None = None


def gateway() -> Gateway:
    global _gateway
    if _gateway is None:
        _gateway = Gateway()
    return _gateway


def chat_sync(request: ChatRequest, *, context: CallContext) -> ChatResponse:
    """For Celery tasks and other sync code (not from inside a running event loop)."""

    async def call() -> ChatResponse:
        try:
            return await gateway().chat(request, context=context)
        finally:
            await gateway().close_loop_providers()

    return async_to_sync(call)()


def gateway_reset() -> None:
    """Forget every process-wide state: snapshots, and (for tests) the gateway itself."""
    global _gateway
    selectors.snapshots_clear()
    _gateway = None
