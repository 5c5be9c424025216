"""OpenAI-compatible servers (vLLM, TGI, llama.cpp, Ollama, TabbyAPI) by base URL,
with their quirks as options, through the real `openai` SDK against the fake."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from apps.llm.providers.base import InvalidProviderRequest, Provider, ProviderConfig, RateLimited
from apps.llm.providers.openai_compatible import OpenAICompatibleProvider
from apps.llm.providers.registry import make_provider
from apps.llm.types import ChatRequest, Message, StreamChunk, Tool, ToolCall
from tests.fakes.llm_fake import Reply
from tests.fakes.openai_server import FakeOpenAI

T = TypeVar("T")

WEATHER = Tool(
    name="get_weather",
    description="The weather in a city now",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
BLOCK = '```tool_call\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```'


def ask(text: str, **kwargs: Any) -> ChatRequest:
    return ChatRequest(
        model="my-llama",
        provider_model="meta-llama/Llama-3.1-8B-Instruct",
        messages=(Message(role="system", content="Be brief."), Message(role="user", content=text)),
        **kwargs,
    )


def call(
    fake: FakeOpenAI, work: Callable[[Provider], Awaitable[T]], *, api_key: str = "", **options: Any
) -> T:
    async def main() -> T:
        provider = make_provider(
            ProviderConfig(kind="openai_compatible", api_key=api_key, base_url=fake.base_url, options=options)
        )
        try:
            return await work(provider)
        finally:
            await provider.close()

    return asyncio.run(main())


async def collect(provider: Provider, request: ChatRequest) -> list[StreamChunk]:
    return [chunk async for chunk in provider.stream(request)]


def test_a_server_without_a_key_and_its_plain_api(openai_fake: FakeOpenAI) -> None:
    openai_fake.script(Reply(text="Hi!"))
    response = call(
        openai_fake, lambda provider: provider.chat(ask("hello", max_tokens=30, tools=(WEATHER,)))
    )
    assert response.message.content == "Hi!"
    assert response.provider == "openai_compatible"
    sent = openai_fake.chat_requests[0].json
    assert sent["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert sent["max_tokens"] == 30  # what every server knows, not max_completion_tokens
    assert "max_completion_tokens" not in sent
    assert sent["tools"][0]["function"]["name"] == "get_weather"  # native tools by default


def test_stream_usage_is_asked_only_of_servers_that_give_it(openai_fake: FakeOpenAI) -> None:
    openai_fake.script(
        Reply(text="one two three", usage=(9, 3, 0)), Reply(text="one two three", usage=(9, 3, 0))
    )
    vllm = call(openai_fake, lambda provider: collect(provider, ask("count")), server="vllm")
    generic = call(openai_fake, lambda provider: collect(provider, ask("count")))
    assert openai_fake.chat_requests[0].json["stream_options"] == {"include_usage": True}
    assert "stream_options" not in openai_fake.chat_requests[1].json
    assert vllm[-1].usage is not None
    assert (vllm[-1].usage.input_tokens, vllm[-1].usage.output_tokens) == (9, 3)
    # No usage from the server: our estimate, so metering still has numbers.
    assert generic[-1].usage is not None
    assert generic[-1].usage.input_tokens > 5
    assert generic[-1].usage.output_tokens >= 3
    assert "".join(chunk.text for chunk in generic) == "one two three"


def test_emulated_tools_for_a_server_without_them(openai_fake: FakeOpenAI) -> None:
    openai_fake.script(Reply(text=f"I will check.\n{BLOCK}"))
    response = call(
        openai_fake,
        lambda provider: provider.chat(ask("Weather in Paris?", tools=(WEATHER,))),
        server="tabbyapi",
    )
    assert response.finish_reason == "tool_calls"
    assert response.message.content == "I will check."
    (tool_call,) = response.message.tool_calls
    assert (tool_call.name, tool_call.parsed_arguments()) == ("get_weather", {"city": "Paris"})
    sent = openai_fake.chat_requests[0].json
    assert "tools" not in sent
    assert sent["messages"][0]["role"] == "system"
    assert sent["messages"][0]["content"].startswith("Be brief.\n\nYou can call tools.")
    assert "get_weather" in sent["messages"][0]["content"]

    # The history with the call and its result goes back as text.
    follow_up = ChatRequest(
        model="my-llama",
        messages=(
            *ask("Weather in Paris?").messages,
            response.message,
            Message(role="tool", content="21 C", tool_call_id=tool_call.id),
        ),
        tools=(WEATHER,),
    )
    openai_fake.script(Reply(text="It is 21 C in Paris."))
    answer = call(openai_fake, lambda provider: provider.chat(follow_up), tools="emulated")
    assert answer.message.content == "It is 21 C in Paris."
    assert answer.message.tool_calls == ()
    messages = openai_fake.chat_requests[1].json["messages"]
    assert [message["role"] for message in messages] == ["system", "user", "assistant", "user"]
    assert "```tool_call" in messages[2]["content"]
    assert messages[3]["content"] == "Result of get_weather:\n21 C"


def test_emulated_tools_while_streaming(openai_fake: FakeOpenAI) -> None:
    openai_fake.script(Reply(text=f"Checking the weather. {BLOCK}", chunk_size=6))
    chunks = call(
        openai_fake, lambda provider: collect(provider, ask("Weather?", tools=(WEATHER,))), tools="emulated"
    )
    streamed = "".join(chunk.text for chunk in chunks[:-1])
    assert streamed.strip() == "Checking the weather."  # the block itself is not shown as text
    last = chunks[-1]
    assert last.finish_reason == "tool_calls"
    assert [call.parsed_arguments() for call in last.tool_calls] == [{"city": "Paris"}]

    openai_fake.script(Reply(text="No tool needed: it is {probably} sunny.", chunk_size=5))
    chunks = call(
        openai_fake, lambda provider: collect(provider, ask("Weather?", tools=(WEATHER,))), tools="emulated"
    )
    assert "".join(chunk.text for chunk in chunks) == "No tool needed: it is {probably} sunny."
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].tool_calls == ()


def test_json_quirks(openai_fake: FakeOpenAI) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    request = ask("status as JSON", response_format="json", json_schema=schema)
    call(openai_fake, lambda provider: provider.chat(request), server="tgi")
    call(openai_fake, lambda provider: provider.chat(request), server="vllm")
    call(openai_fake, lambda provider: provider.chat(request))
    call(openai_fake, lambda provider: provider.chat(request), json="prompt")
    sent = [request.json for request in openai_fake.chat_requests]
    assert sent[0]["response_format"] == {"type": "json", "value": schema}
    assert sent[1]["response_format"]["json_schema"]["schema"] == schema
    assert sent[2]["response_format"] == {"type": "json_object"}
    assert "response_format" not in sent[3]
    assert "JSON object only" in sent[3]["messages"][0]["content"]


def test_errors_name_the_server(openai_fake: FakeOpenAI) -> None:
    openai_fake.script(Reply.error(429, "too many requests", retry_after=1))
    with pytest.raises(RateLimited) as caught:
        call(openai_fake, lambda provider: provider.chat(ask("hi")), server="vllm")
    assert caught.value.message.startswith("vllm server answered 429")
    assert caught.value.provider == "openai_compatible"


def test_embeddings_where_served(openai_fake: FakeOpenAI) -> None:
    response = call(
        openai_fake, lambda provider: provider.embed("nomic-embed-text", ["a b", "c"]), server="ollama"
    )
    assert len(response.vectors) == 2
    with pytest.raises(InvalidProviderRequest, match="serves no embeddings"):
        call(openai_fake, lambda provider: provider.embed("x", ["a"]), server="tgi")


def test_configuration_mistakes_are_refused() -> None:
    with pytest.raises(ValueError, match="base URL"):
        OpenAICompatibleProvider(ProviderConfig(kind="openai_compatible"))
    with pytest.raises(ValueError, match="unknown OpenAI-compatible server 'lmstudio'"):
        OpenAICompatibleProvider(
            ProviderConfig(
                kind="openai_compatible", base_url="http://127.0.0.1:1/v1", options={"server": "lmstudio"}
            )
        )
    with pytest.raises(ValueError, match="option tools must be one of native, emulated"):
        OpenAICompatibleProvider(
            ProviderConfig(
                kind="openai_compatible", base_url="http://127.0.0.1:1/v1", options={"tools": "maybe"}
            )
        )


def test_tool_calls_have_one_type_native_or_emulated(openai_fake: FakeOpenAI) -> None:
    openai_fake.script(Reply.tool("get_weather", {"city": "Paris"}), Reply(text=BLOCK))
    native = call(openai_fake, lambda provider: provider.chat(ask("w", tools=(WEATHER,))), server="vllm")
    emulated = call(openai_fake, lambda provider: provider.chat(ask("w", tools=(WEATHER,))), tools="emulated")
    for response in (native, emulated):
        (tool_call,) = response.message.tool_calls
        assert isinstance(tool_call, ToolCall)
        assert (tool_call.name, tool_call.parsed_arguments()) == ("get_weather", {"city": "Paris"})
        assert response.finish_reason == "tool_calls"


def test_stream_dialects_of_tool_call_deltas(openai_fake: FakeOpenAI) -> None:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def piece(name: str, arguments: str, call_id: str | None = None) -> dict[str, Any]:
        part: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": arguments}}
        if call_id:
            part["id"] = call_id
        return {"tool_calls": [part]}

    openai_fake.script(
        # The name on every piece, no index, a new id for the second call; "stop" after tool calls.
        Reply(
            raw_events=[
                chunk({"role": "assistant", "content": None}),
                chunk(piece("get_weather", '{"city": ', "call_a")),
                chunk(piece("get_weather", '"Paris"}')),
                chunk(piece("get_weather", '{"city": "Oslo"}', "call_b")),
                chunk({}, "stop"),
                "[DONE]",
            ]
        )
    )
    chunks = call(openai_fake, lambda provider: collect(provider, ask("Weather?", tools=(WEATHER,))))
    last = chunks[-1]
    assert last.finish_reason == "tool_calls"
    assert [(c.id, c.name, c.parsed_arguments()) for c in last.tool_calls] == [
        ("call_a", "get_weather", {"city": "Paris"}),
        ("call_b", "get_weather", {"city": "Oslo"}),
    ]
