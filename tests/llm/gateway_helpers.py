"""Helpers for the gateway's tests: the platform's OpenAI key pointed at the loopback
fake, short retry delays, and one-line calls through the real gateway."""

from collections.abc import AsyncIterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync

from apps.llm.gateway import gateway, gateway_reset
from apps.llm.providers.registry import provider_kinds
from apps.llm.types import CallContext, ChatRequest, ChatResponse, Message, StreamChunk
from tests.fakes.openai_server import FakeOpenAI


@pytest.fixture
def openai_platform(settings: Any, openai_fake: FakeOpenAI) -> FakeOpenAI:
    """The platform's default OpenAI credentials lead to the fake; no other provider has any."""
    settings.OPENAI_API_KEY = "sk-platform-test"
    settings.OPENAI_BASE_URL = openai_fake.base_url
    settings.ANTHROPIC_API_KEY = ""
    settings.GEMINI_API_KEY = ""
    settings.LLM_RETRY_BASE_SECONDS = 0.01
    settings.LLM_RETRY_CAP_SECONDS = 0.05
    gateway_reset()
    provider_kinds()  # the SDKs are imported now, not inside a test's timed call
    return openai_fake


def ask(model: str, text: str = "Hello", **fields: Any) -> ChatRequest:
    return ChatRequest(model=model, messages=(Message(role="user", content=text),), **fields)


def chat(request: ChatRequest, context: CallContext) -> ChatResponse:
    return async_to_sync(gateway().chat)(request, context=context)


def stream(request: ChatRequest, context: CallContext) -> tuple[list[StreamChunk], BaseException | None]:
    """Every chunk the stream yielded, and the error that ended it (or None)."""

    async def collect() -> tuple[list[StreamChunk], BaseException | None]:
        chunks: list[StreamChunk] = []
        iterator: AsyncIterator[StreamChunk] = gateway().stream(request, context=context)
        try:
            async for chunk in iterator:
                chunks.append(chunk)
        except Exception as exc:
            return chunks, exc
        return chunks, None

    return async_to_sync(collect)()


def sent_messages(fake: FakeOpenAI) -> list[str]:
    """The last user message of each chat request the fake received, in order."""
    return [request.json["messages"][-1]["content"] for request in fake.chat_requests]
