"""What a provider does, and the errors every provider raises.

A provider is one adapter module per outside API (apps/llm/providers/<kind>.py):
it turns our types (apps/llm/types.py) into SDK calls and back, and maps the
SDK's failures to the errors below, so retries, fallback and circuit breakers
work the same for every provider. Custom APIs plug in with a subclass and a
registry entry (apps/llm/providers/registry.py), no change to the core."""

from __future__ import annotations

import abc
import functools
import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from apps.llm.types import ChatRequest, ChatResponse, EmbeddingResponse, Message, StreamChunk


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context for every provider's HTTP client. The SDKs build a new one per client
    by default, loading the CA bundle each time (about 20 ms), and a Celery task's gateway
    call makes its clients anew on each event loop (apps/llm/gateway.py chat_sync)."""
    import certifi

    return ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE") or certifi.where())


@dataclass(frozen=True)
class ProviderConfig:
    kind: str  # the registry key, e.g. "openai"
    api_key: str = ""
    base_url: str = ""  # "" = the provider's public endpoint
    timeout_seconds: float = 60.0
    options: dict[str, Any] = field(default_factory=dict)  # provider-specific (e.g. model_path)


class ProviderError(Exception):
    """A provider call failed. `code` is stable (API error bodies and metering use it)."""

    code = "provider_error"
    retryable = False
    status = 502

    def __init__(self, message: str, *, retry_after: float | None = None, provider: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.provider = provider


class RateLimited(ProviderError):
    code = "provider_rate_limited"
    retryable = True
    status = 429


class ProviderUnavailable(ProviderError):
    """5xx, connection refused or reset."""

    code = "provider_unavailable"
    retryable = True
    status = 502


class ProviderTimeout(ProviderError):
    code = "provider_timeout"
    retryable = True
    status = 504


class MalformedResponse(ProviderError):
    code = "provider_malformed_response"
    retryable = True
    status = 502


class AuthenticationFailed(ProviderError):
    code = "provider_authentication_failed"
    status = 403


class ContextWindowExceeded(ProviderError):
    code = "context_window_exceeded"
    status = 400


class InvalidProviderRequest(ProviderError):
    code = "provider_rejected_request"
    status = 400


class Provider(abc.ABC):
    kind: ClassVar[str]
    # False: the gateway emulates tool calls for this provider (apps/llm/tool_emulation.py).
    native_tools: ClassVar[bool] = True
    native_json: ClassVar[bool] = True

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config

    @abc.abstractmethod
    async def chat(self, request: ChatRequest) -> ChatResponse: ...

    @abc.abstractmethod
    def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]: ...

    async def embed(self, model: str, inputs: list[str]) -> EmbeddingResponse:
        raise InvalidProviderRequest(f"{self.kind} does not serve embeddings", provider=self.kind)

    def count_tokens(self, model: str, messages: tuple[Message, ...]) -> int:
        """An estimate good enough for context-window decisions (about 4 characters a token)."""
        characters = sum(len(message.content or "") + 16 for message in messages)
        return characters // 4 + 1

    async def close(self) -> None:  # noqa: B027 (optional)
        """Release connections (the gateway calls it when credentials change)."""
