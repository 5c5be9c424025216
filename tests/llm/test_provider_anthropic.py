"""The Anthropic provider through the real `anthropic` SDK against the loopback fake
(tests/fakes/anthropic_server.py): the system prompt apart, tool_use/tool_result
blocks, the SSE event stream, usage with prompt-cache reads, and failures."""

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from apps.llm.providers.anthropic import AnthropicProvider
from apps.llm.providers.base import (
    AuthenticationFailed,
    ContextWindowExceeded,
    MalformedResponse,
    Provider,
    ProviderConfig,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
)
from apps.llm.providers.registry import make_provider
from apps.llm.types import ChatRequest, Message, StreamChunk, Tool, ToolCall
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.llm_fake import Reply

T = TypeVar("T")

WEATHER = Tool(
    name="get_weather",
    description="The weather in a city now",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def ask(text: str, **kwargs: Any) -> ChatRequest:
    return ChatRequest(
        model="claude-3-5-haiku",
        provider_model="claude-3-5-haiku-20241022",
        messages=(Message(role="system", content="Be brief."), Message(role="user", content=text)),
        **kwargs,
    )


def call(fake: FakeAnthropic, work: Callable[[Provider], Awaitable[T]], *, timeout: float = 10) -> T:
    async def main() -> T:
        provider = make_provider(
            ProviderConfig(
                kind="anthropic", api_key="sk-ant-test", base_url=fake.base_url, timeout_seconds=timeout
            )
        )
        try:
            return await work(provider)
        finally:
            await provider.close()

    return asyncio.run(main())


async def collect(provider: Provider, request: ChatRequest) -> list[StreamChunk]:
    return [chunk async for chunk in provider.stream(request)]


def test_chat_sends_the_system_prompt_apart_and_counts_cache_reads(anthropic_fake: FakeAnthropic) -> None:
    # 100 new input tokens and 900 read from the prompt cache.
    anthropic_fake.script(Reply(text="Paris.", usage=(100, 3, 900)))
    response = call(
        anthropic_fake, lambda provider: provider.chat(ask("Capital of France?", temperature=0.1))
    )
    assert isinstance(response.message.content, str)
    assert response.message.content == "Paris."
    assert response.finish_reason == "stop"
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.cached_tokens) == (
        1000,
        3,
        900,
    )
    assert response.model == "claude-3-5-haiku"
    assert response.provider == "anthropic"
    assert response.id.startswith("msg_")
    sent = anthropic_fake.message_requests[0]
    assert "sk-ant-test" in (sent.headers.get("x-api-key"), sent.headers.get("authorization", "")[7:])
    assert sent.json["model"] == "claude-3-5-haiku-20241022"
    assert sent.json["system"] == "Be brief."
    assert sent.json["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]}
    ]
    assert sent.json["max_tokens"] == 4096  # required by the API: our default when the request sets none
    assert sent.json["temperature"] == 0.1


def test_tool_use_and_tool_result_blocks(anthropic_fake: FakeAnthropic) -> None:
    anthropic_fake.script(Reply.tool("get_weather", {"city": "Paris"}, text="Let me look."))
    request = ask("Weather in Paris?", tools=(WEATHER,), tool_choice="required", max_tokens=200)
    response = call(anthropic_fake, lambda provider: provider.chat(request))
    assert response.finish_reason == "tool_calls"
    assert response.message.content == "Let me look."
    (tool_call,) = response.message.tool_calls
    assert tool_call.id.startswith("toolu_")
    assert (tool_call.name, tool_call.parsed_arguments()) == ("get_weather", {"city": "Paris"})
    sent = anthropic_fake.message_requests[0].json
    assert sent["tools"] == [
        {"name": "get_weather", "description": WEATHER.description, "input_schema": WEATHER.parameters}
    ]
    assert sent["tool_choice"] == {"type": "any"}

    second = ToolCall(id="toolu_second", name="get_weather", arguments='{"city": "Lyon"}')
    follow_up = ChatRequest(
        model="claude-3-5-haiku",
        messages=(
            *request.messages,
            Message(role="assistant", content="Let me look.", tool_calls=(tool_call, second)),
            Message(role="tool", content="21 C", tool_call_id=tool_call.id),
            Message(role="tool", content="18 C", tool_call_id="toolu_second"),
        ),
        tools=(WEATHER,),
    )
    call(anthropic_fake, lambda provider: provider.chat(follow_up))
    messages = anthropic_fake.message_requests[1].json["messages"]
    assert [message["role"] for message in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == [
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": tool_call.id, "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_second", "name": "get_weather", "input": {"city": "Lyon"}},
    ]
    # Both results in the one user turn that follows, as the API requires.
    assert messages[2]["content"] == [
        {"type": "tool_result", "tool_use_id": tool_call.id, "content": "21 C"},
        {"type": "tool_result", "tool_use_id": "toolu_second", "content": "18 C"},
    ]


@pytest.mark.parametrize(
    ("choice", "sent"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("get_weather", {"type": "tool", "name": "get_weather"}),
    ],
)
def test_tool_choice(anthropic_fake: FakeAnthropic, choice: str, sent: dict[str, str]) -> None:
    call(anthropic_fake, lambda provider: provider.chat(ask("hi", tools=(WEATHER,), tool_choice=choice)))
    assert anthropic_fake.message_requests[0].json["tool_choice"] == sent


def test_json_output(anthropic_fake: FakeAnthropic) -> None:
    schema = {"type": "object", "properties": {"capital": {"type": "string"}}}
    anthropic_fake.script(Reply(text='{"capital": "Paris"}'), Reply(text='{"capital": "Rome"}'))
    first = call(anthropic_fake, lambda provider: provider.chat(ask("France", response_format="json")))
    second = call(
        anthropic_fake,
        lambda provider: provider.chat(ask("Italy", response_format="json", json_schema=schema)),
    )
    assert json.loads(first.message.content or "") == {"capital": "Paris"}
    assert json.loads(second.message.content or "") == {"capital": "Rome"}
    assert "JSON object only" in anthropic_fake.message_requests[0].json["system"]
    assert anthropic_fake.message_requests[1].json["output_config"] == {
        "format": {"type": "json_schema", "schema": schema}
    }


def test_stream_of_text_and_tool_use(anthropic_fake: FakeAnthropic) -> None:
    anthropic_fake.script(
        Reply(text="Bonjour, Paris!", usage=(40, 5, 30), chunk_size=3),
        Reply.tool("get_weather", {"city": "Paris", "days": 3}, text="Checking.", chunk_size=4),
    )
    chunks = call(anthropic_fake, lambda provider: collect(provider, ask("Greet Paris")))
    assert "".join(chunk.text for chunk in chunks) == "Bonjour, Paris!"
    assert len([chunk for chunk in chunks if chunk.text]) == 5
    last = chunks[-1]
    assert last.finish_reason == "stop"
    assert last.usage is not None
    assert (last.usage.input_tokens, last.usage.output_tokens, last.usage.cached_tokens) == (70, 5, 30)

    chunks = call(anthropic_fake, lambda provider: collect(provider, ask("Weather?", tools=(WEATHER,))))
    assert "".join(chunk.text for chunk in chunks) == "Checking."
    last = chunks[-1]
    assert last.finish_reason == "tool_calls"
    (tool_call,) = last.tool_calls
    assert tool_call.parsed_arguments() == {"city": "Paris", "days": 3}
    assert anthropic_fake.message_requests[1].json["stream"] is True


def test_rate_limit_with_retry_after(anthropic_fake: FakeAnthropic) -> None:
    anthropic_fake.script(
        Reply.error(429, "Number of request tokens has exceeded your rate limit", retry_after=7)
    )
    with pytest.raises(RateLimited) as caught:
        call(anthropic_fake, lambda provider: provider.chat(ask("hi")))
    assert caught.value.retry_after == 7
    assert "exceeded your rate limit" in caught.value.message
    assert len(anthropic_fake.message_requests) == 1


@pytest.mark.parametrize("status", [500, 529])
def test_server_errors_and_overload(anthropic_fake: FakeAnthropic, status: int) -> None:
    anthropic_fake.script(Reply.error(status, "Overloaded"))
    with pytest.raises(ProviderUnavailable) as caught:
        call(anthropic_fake, lambda provider: collect(provider, ask("hi")))
    assert caught.value.retryable
    assert len(anthropic_fake.message_requests) == 1


def test_timeout(anthropic_fake: FakeAnthropic) -> None:
    anthropic_fake.script(Reply.slow(3))
    started = time.monotonic()
    with pytest.raises(ProviderTimeout):
        call(anthropic_fake, lambda provider: provider.chat(ask("hi")), timeout=0.3)
    assert time.monotonic() - started < 2.5


def test_malformed_body_and_stream(anthropic_fake: FakeAnthropic) -> None:
    anthropic_fake.script(
        Reply.malformed(b'{"id": "msg_1", "type": "message", "content": ['),
        Reply.malformed(b'{"type": "message_start", "message": {'),
    )
    with pytest.raises(MalformedResponse):
        call(anthropic_fake, lambda provider: provider.chat(ask("hi")))
    with pytest.raises(MalformedResponse):
        call(anthropic_fake, lambda provider: collect(provider, ask("hi")))


def test_stream_cut_before_message_stop(anthropic_fake: FakeAnthropic) -> None:
    anthropic_fake.script(Reply(text="a long answer that is cut", chunk_size=3, cut_after_events=5))
    with pytest.raises((ProviderUnavailable, MalformedResponse)):
        call(anthropic_fake, lambda provider: collect(provider, ask("hi")))


def test_authentication_and_context_errors(anthropic_fake: FakeAnthropic) -> None:
    anthropic_fake.script(Reply.error(400, "prompt is too long: 210000 tokens > 200000 maximum"))
    with pytest.raises(ContextWindowExceeded) as caught:
        call(anthropic_fake, lambda provider: provider.chat(ask("long")))
    assert "200000 maximum" in caught.value.message
    anthropic_fake.api_key = "sk-ant-right"
    with pytest.raises(AuthenticationFailed):
        call(anthropic_fake, lambda provider: provider.chat(ask("hi")))


def test_no_embeddings_and_a_token_estimate() -> None:
    provider = AnthropicProvider(ProviderConfig(kind="anthropic", api_key="k"))
    with pytest.raises(Exception, match="does not serve embeddings"):
        asyncio.run(provider.embed("claude", ["x"]))
    text = (Message(role="user", content="The quick brown fox jumps over the lazy dog. " * 20),)
    assert provider.count_tokens("claude-3-5-haiku", text) > make_provider(
        ProviderConfig(kind="openai", api_key="k")
    ).count_tokens("gpt-4o-mini", text)


def test_error_event_in_the_middle_of_a_stream(anthropic_fake: FakeAnthropic) -> None:
    anthropic_fake.script(
        Reply(text="Partial answer", chunk_size=4, stream_error_after=4, stream_error_status=529),
        Reply(text="x", stream_error_after=1, stream_error_status=429, error_message="rate limited"),
    )
    received: list[str] = []

    async def work(provider: Provider) -> None:
        async for chunk in provider.stream(ask("hi")):
            received.append(chunk.text)

    with pytest.raises(ProviderUnavailable) as caught:
        call(anthropic_fake, work)
    assert "Overloaded" in caught.value.message
    assert "".join(received) == "Part"
    with pytest.raises(RateLimited):
        call(anthropic_fake, lambda provider: collect(provider, ask("hi")))
