"""The Gemini provider through the real `google-genai` SDK, pointed by its
HttpOptions base URL at the loopback fake (tests/fakes/gemini_server.py)."""

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

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
from apps.llm.types import ChatRequest, Message, StreamChunk, Tool
from tests.fakes.gemini_server import FakeGemini
from tests.fakes.llm_fake import Reply

T = TypeVar("T")

WEATHER = Tool(
    name="get_weather",
    description="The weather in a city now",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def ask(text: str, **kwargs: Any) -> ChatRequest:
    return ChatRequest(
        model="gemini-2.0-flash",
        messages=(Message(role="system", content="Be brief."), Message(role="user", content=text)),
        **kwargs,
    )


def call(fake: FakeGemini, work: Callable[[Provider], Awaitable[T]], *, timeout: float = 10) -> T:
    async def main() -> T:
        provider = make_provider(
            ProviderConfig(kind="gemini", api_key="gm-test", base_url=fake.base_url, timeout_seconds=timeout)
        )
        try:
            return await work(provider)
        finally:
            await provider.close()

    return asyncio.run(main())


async def collect(provider: Provider, request: ChatRequest) -> list[StreamChunk]:
    return [chunk async for chunk in provider.stream(request)]


def test_chat_with_system_instruction_and_usage(gemini_fake: FakeGemini) -> None:
    gemini_fake.script(Reply(text="Paris.", usage=(50, 2, 40)))
    response = call(
        gemini_fake, lambda provider: provider.chat(ask("Capital?", max_tokens=20, temperature=0.3))
    )
    assert response.message.content == "Paris."
    assert response.finish_reason == "stop"
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.cached_tokens) == (
        50,
        2,
        40,
    )
    assert (response.model, response.provider) == ("gemini-2.0-flash", "gemini")
    sent = gemini_fake.generate_requests[0]
    assert sent.path.endswith("/models/gemini-2.0-flash:generateContent")  # the SDK's API version
    assert sent.headers["x-goog-api-key"] == "gm-test"
    body = sent.json
    assert body["systemInstruction"]["parts"] == [{"text": "Be brief."}]
    assert body["contents"] == [{"role": "user", "parts": [{"text": "Capital?"}]}]
    assert body["generationConfig"]["maxOutputTokens"] == 20
    assert body["generationConfig"]["temperature"] == 0.3


def test_function_call_and_response(gemini_fake: FakeGemini) -> None:
    gemini_fake.script(Reply.tool("get_weather", {"city": "Paris"}))
    request = ask("Weather in Paris?", tools=(WEATHER,), tool_choice="get_weather")
    response = call(gemini_fake, lambda provider: provider.chat(request))
    assert response.finish_reason == "tool_calls"
    (tool_call,) = response.message.tool_calls
    assert (tool_call.name, tool_call.parsed_arguments()) == ("get_weather", {"city": "Paris"})
    assert tool_call.id  # Gemini gave none: we made one
    body = gemini_fake.generate_requests[0].json
    declaration = body["tools"][0]["functionDeclarations"][0]
    assert declaration["name"] == "get_weather"
    # The API takes either spelling of a field (protobuf JSON); this SDK sends the snake_case one.
    assert (
        declaration.get("parametersJsonSchema", declaration.get("parameters_json_schema"))
        == WEATHER.parameters
    )
    assert body["toolConfig"]["functionCallingConfig"] == {
        "mode": "ANY",
        "allowedFunctionNames": ["get_weather"],
    }

    follow_up = ChatRequest(
        model="gemini-2.0-flash",
        messages=(
            *request.messages,
            response.message,
            Message(role="tool", content="21 C", tool_call_id=tool_call.id),
        ),
        tools=(WEATHER,),
    )
    call(gemini_fake, lambda provider: provider.chat(follow_up))
    contents = gemini_fake.generate_requests[1].json["contents"]
    assert [content["role"] for content in contents] == ["user", "model", "user"]
    assert contents[1]["parts"][0]["functionCall"] == {"name": "get_weather", "args": {"city": "Paris"}}
    # The result names the function, as Gemini wants (not the call id).
    assert contents[2]["parts"][0]["functionResponse"] == {
        "name": "get_weather",
        "response": {"result": "21 C"},
    }


def test_json_output(gemini_fake: FakeGemini) -> None:
    schema = {"type": "object", "properties": {"capital": {"type": "string"}}}
    gemini_fake.script(Reply(text='{"capital": "Paris"}'))
    response = call(
        gemini_fake, lambda provider: provider.chat(ask("France", response_format="json", json_schema=schema))
    )
    assert json.loads(response.message.content or "") == {"capital": "Paris"}
    config = gemini_fake.generate_requests[0].json["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"] == schema


def test_stream_of_text_and_a_function_call(gemini_fake: FakeGemini) -> None:
    gemini_fake.script(
        Reply(text="Hello from Gemini", usage=(12, 4, 0), chunk_size=5),
        Reply.tool("get_weather", {"city": "Oslo"}, text="One moment."),
    )
    chunks = call(gemini_fake, lambda provider: collect(provider, ask("hi")))
    assert "".join(chunk.text for chunk in chunks) == "Hello from Gemini"
    assert len([chunk for chunk in chunks if chunk.text]) == 4
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.input_tokens, chunks[-1].usage.output_tokens) == (12, 4)
    assert ":streamGenerateContent" in gemini_fake.generate_requests[0].path
    assert gemini_fake.generate_requests[0].query["alt"] == ["sse"]

    chunks = call(gemini_fake, lambda provider: collect(provider, ask("Weather?", tools=(WEATHER,))))
    assert "".join(chunk.text for chunk in chunks) == "One moment."
    assert chunks[-1].finish_reason == "tool_calls"
    assert chunks[-1].tool_calls[0].parsed_arguments() == {"city": "Oslo"}


def test_rate_limit_and_server_errors(gemini_fake: FakeGemini) -> None:
    gemini_fake.script(
        Reply.error(429, "Resource has been exhausted (e.g. check quota).", retry_after=4),
        Reply.error(503, "The model is overloaded. Please try again later."),
        Reply.error(500, "An internal error has occurred."),
    )
    with pytest.raises(RateLimited) as caught:
        call(gemini_fake, lambda provider: provider.chat(ask("hi")))
    assert caught.value.retry_after == 4
    with pytest.raises(ProviderUnavailable):
        call(gemini_fake, lambda provider: provider.chat(ask("hi")))
    with pytest.raises(ProviderUnavailable):
        call(gemini_fake, lambda provider: collect(provider, ask("hi")))
    assert len(gemini_fake.generate_requests) == 3  # no retries inside the SDK


def test_timeout(gemini_fake: FakeGemini) -> None:
    gemini_fake.script(Reply.slow(3))
    started = time.monotonic()
    with pytest.raises(ProviderTimeout):
        call(gemini_fake, lambda provider: provider.chat(ask("hi")), timeout=0.3)
    assert time.monotonic() - started < 2.5


def test_malformed_answers(gemini_fake: FakeGemini) -> None:
    gemini_fake.script(
        Reply.malformed(b'{"candidates": [{"content": '),
        Reply.malformed(b'{"candidates": []}'),
        Reply.malformed(b'{"candidates": [{"content": {"parts": [{"text": "hi"'),
    )
    with pytest.raises(MalformedResponse):
        call(gemini_fake, lambda provider: provider.chat(ask("hi")))
    with pytest.raises(MalformedResponse):
        call(gemini_fake, lambda provider: provider.chat(ask("hi")))
    with pytest.raises(MalformedResponse):
        call(gemini_fake, lambda provider: collect(provider, ask("hi")))


def test_bad_key_and_context_window(gemini_fake: FakeGemini) -> None:
    gemini_fake.script(
        Reply.error(
            400, "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."
        )
    )
    with pytest.raises(ContextWindowExceeded):
        call(gemini_fake, lambda provider: provider.chat(ask("long")))
    gemini_fake.api_key = "gm-right"
    gemini_fake.script(Reply.error(400, "API key not valid. Please pass a valid API key."))
    with pytest.raises(AuthenticationFailed):
        call(gemini_fake, lambda provider: provider.chat(ask("hi")))


def test_embeddings(gemini_fake: FakeGemini) -> None:
    response = call(
        gemini_fake,
        lambda provider: provider.embed("text-embedding-004", ["red apples", "Red apples!", "tax law"]),
    )
    assert len(response.vectors) == 3
    assert response.vectors[0] == response.vectors[1]
    assert response.vectors[0] != response.vectors[2]
    assert response.usage.input_tokens > 0
    assert gemini_fake.requests[0].path.endswith(":batchEmbedContents")


def test_error_event_in_the_middle_of_a_stream(gemini_fake: FakeGemini) -> None:
    gemini_fake.script(
        Reply(text="Partial answer", chunk_size=4, stream_error_after=2, stream_error_status=503)
    )
    received: list[str] = []

    async def work(provider: Provider) -> None:
        async for chunk in provider.stream(ask("hi")):
            received.append(chunk.text)

    with pytest.raises(ProviderUnavailable):
        call(gemini_fake, work)
    assert "".join(received) == "Partial "
