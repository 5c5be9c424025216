"""The OpenAI provider through the real `openai` SDK against the loopback fake
(tests/fakes/openai_server.py): answers, streams, tool calls, JSON output,
embeddings, and every failure mapped to the provider error the gateway acts on."""

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any, TypeVar

import pytest

from apps.llm.providers.base import (
    AuthenticationFailed,
    ContextWindowExceeded,
    InvalidProviderRequest,
    MalformedResponse,
    Provider,
    ProviderConfig,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
)
from apps.llm.providers.http_errors import parse_retry_after
from apps.llm.providers.openai import OpenAIProvider
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
TIME = Tool(
    name="get_time", description="The time in a city", parameters={"type": "object", "properties": {}}
)


def ask(text: str, **kwargs: Any) -> ChatRequest:
    return ChatRequest(
        model="gpt-4o-mini",
        messages=(Message(role="system", content="Be brief."), Message(role="user", content=text)),
        **kwargs,
    )


def call(
    fake: FakeOpenAI, work: Callable[[Provider], Awaitable[T]], *, timeout: float = 10, kind: str = "openai"
) -> T:
    async def main() -> T:
        provider = make_provider(
            ProviderConfig(kind=kind, api_key="sk-test", base_url=fake.base_url, timeout_seconds=timeout)
        )
        try:
            return await work(provider)
        finally:
            await provider.close()

    return asyncio.run(main())


async def collect(provider: Provider, request: ChatRequest) -> list[StreamChunk]:
    return [chunk async for chunk in provider.stream(request)]


def test_registry_makes_the_openai_provider() -> None:
    provider = make_provider(ProviderConfig(kind="openai", api_key="k", base_url="http://127.0.0.1:9/v1"))
    assert isinstance(provider, OpenAIProvider)
    assert provider.client.max_retries == 0


def test_chat_answers_with_text_and_usage(openai_fake: FakeOpenAI) -> None:
    openai_fake.script(Reply(text="Paris.", usage=(21, 2, 8)))
    request = ask("Capital of France?", max_tokens=50, temperature=0.2, stop=("\n\n",), seed=7)
    request = ChatRequest(**{**request.__dict__, "provider_model": "gpt-4o-mini-2024-07-18"})
    response = call(openai_fake, lambda provider: provider.chat(request))
    assert response.message.role == "assistant"
    assert response.message.content == "Paris."
    assert response.finish_reason == "stop"
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.cached_tokens) == (
        21,
        2,
        8,
    )
    assert response.model == "gpt-4o-mini"  # our name, not the provider's
    assert response.provider == "openai"
    assert response.id.startswith("chatcmpl-")
    sent = openai_fake.chat_requests[0]
    assert sent.headers["authorization"] == "Bearer sk-test"
    assert sent.json["model"] == "gpt-4o-mini-2024-07-18"
    assert sent.json["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
    ]
    assert sent.json["max_completion_tokens"] == 50
    assert (sent.json["temperature"], sent.json["stop"], sent.json["seed"]) == (0.2, ["\n\n"], 7)
    assert "tools" not in sent.json


def test_tool_call_and_its_result_round_trip(openai_fake: FakeOpenAI) -> None:
    openai_fake.script(Reply.tool("get_weather", {"city": "Paris"}))
    request = ask("Weather in Paris?", tools=(WEATHER, TIME), tool_choice="get_weather")
    response = call(openai_fake, lambda provider: provider.chat(request))
    assert response.finish_reason == "tool_calls"
    assert response.message.content is None
    (tool_call,) = response.message.tool_calls
    assert tool_call.name == "get_weather"
    assert tool_call.parsed_arguments() == {"city": "Paris"}
    sent = openai_fake.chat_requests[0].json
    assert sent["tools"][0] == {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": WEATHER.description,
            "parameters": WEATHER.parameters,
        },
    }
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}

    # The caller runs the tool and sends the result back.
    follow_up = ChatRequest(
        model="gpt-4o-mini",
        messages=(
            *request.messages,
            response.message,
            Message(role="tool", content="21 C and sunny", tool_call_id=tool_call.id),
        ),
        tools=(WEATHER,),
    )
    openai_fake.script(Reply(text="It is 21 C and sunny."))
    answer = call(openai_fake, lambda provider: provider.chat(follow_up))
    assert answer.message.content == "It is 21 C and sunny."
    messages = openai_fake.chat_requests[1].json["messages"]
    assert messages[2] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": tool_call.id,
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    }
    assert messages[3] == {"role": "tool", "tool_call_id": tool_call.id, "content": "21 C and sunny"}


@pytest.mark.parametrize(("choice", "sent"), [("auto", "auto"), ("none", "none"), ("required", "required")])
def test_tool_choice_words_pass_through(openai_fake: FakeOpenAI, choice: str, sent: str) -> None:
    call(openai_fake, lambda provider: provider.chat(ask("hi", tools=(WEATHER,), tool_choice=choice)))
    assert openai_fake.chat_requests[0].json["tool_choice"] == sent


def test_json_mode_and_json_schema(openai_fake: FakeOpenAI) -> None:
    schema = {"type": "object", "properties": {"capital": {"type": "string"}}, "required": ["capital"]}
    openai_fake.script(Reply(text='{"capital": "Paris"}'), Reply(text='{"capital": "Rome"}'))
    first = call(openai_fake, lambda provider: provider.chat(ask("France, as JSON", response_format="json")))
    second = call(
        openai_fake, lambda provider: provider.chat(ask("Italy", response_format="json", json_schema=schema))
    )
    assert json.loads(first.message.content or "") == {"capital": "Paris"}
    assert json.loads(second.message.content or "") == {"capital": "Rome"}
    assert openai_fake.chat_requests[0].json["response_format"] == {"type": "json_object"}
    assert openai_fake.chat_requests[1].json["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema, "strict": False},
    }


def test_stream_delivers_text_in_pieces_then_usage(openai_fake: FakeOpenAI) -> None:
    openai_fake.script(Reply(text="The capital of France is Paris.", usage=(30, 8, 0), chunk_size=5))
    chunks = call(openai_fake, lambda provider: collect(provider, ask("Capital?")))
    texts = [chunk.text for chunk in chunks if chunk.text]
    assert len(texts) > 3
    assert "".join(texts) == "The capital of France is Paris."
    last = chunks[-1]
    assert last.finish_reason == "stop"
    assert last.usage is not None
    assert (last.usage.input_tokens, last.usage.output_tokens) == (30, 8)
    assert all(chunk.finish_reason is None for chunk in chunks[:-1])
    assert all(chunk.model == "gpt-4o-mini" for chunk in chunks)
    sent = openai_fake.chat_requests[0].json
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}


def test_stream_assembles_tool_calls_from_deltas(openai_fake: FakeOpenAI) -> None:
    reply = Reply(
        text="",
        tool_calls=[("get_weather", {"city": "Paris", "unit": "celsius"}), ("get_time", {})],
        chunk_size=3,
    )
    openai_fake.script(reply)
    chunks = call(
        openai_fake, lambda provider: collect(provider, ask("Weather and time?", tools=(WEATHER, TIME)))
    )
    assert [chunk.tool_calls for chunk in chunks[:-1]] == [()] * (len(chunks) - 1)
    last = chunks[-1]
    assert last.finish_reason == "tool_calls"
    assert [tool_call.name for tool_call in last.tool_calls] == ["get_weather", "get_time"]
    assert last.tool_calls[0].parsed_arguments() == {"city": "Paris", "unit": "celsius"}
    assert last.tool_calls[1].parsed_arguments() == {}
    assert all(tool_call.id.startswith("call_") for tool_call in last.tool_calls)


def test_rate_limit_carries_retry_after_and_the_sdk_does_not_retry(openai_fake: FakeOpenAI) -> None:
    openai_fake.script(Reply.error(429, "Rate limit reached for gpt-4o-mini", retry_after=2))
    with pytest.raises(RateLimited) as caught:
        call(openai_fake, lambda provider: provider.chat(ask("hi")))
    assert caught.value.retry_after == 2
    assert caught.value.retryable
    assert caught.value.code == "provider_rate_limited"
    assert "Rate limit reached" in caught.value.message
    assert len(openai_fake.chat_requests) == 1  # the gateway retries, not the SDK


def test_rate_limit_in_a_stream_before_the_first_token(openai_fake: FakeOpenAI) -> None:
    openai_fake.script(Reply.error(429, "slow down", headers={"retry-after-ms": "1500"}))
    with pytest.raises(RateLimited) as caught:
        call(openai_fake, lambda provider: collect(provider, ask("hi")))
    assert caught.value.retry_after == 1.5


def test_retry_after_forms() -> None:
    assert parse_retry_after({"Retry-After": "3"}) == 3
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    in_ten = parse_retry_after({"Retry-After": formatdate(time.time() + 10, usegmt=True)})
    assert in_ten is not None
    assert 8 <= in_ten <= 10
    assert parse_retry_after({"Retry-After": formatdate(time.time() - 60, usegmt=True)}) == 0
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({"Retry-After": "99999999"}) == 3600
    assert parse_retry_after({}) is None


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_unavailable_and_retryable(openai_fake: FakeOpenAI, status: int) -> None:
    openai_fake.script(Reply.error(status, "The server had an error while processing your request."))
    with pytest.raises(ProviderUnavailable) as caught:
        call(openai_fake, lambda provider: provider.chat(ask("hi")))
    assert caught.value.retryable
    assert f"answered {status}" in caught.value.message
    assert len(openai_fake.chat_requests) == 1


def test_slow_answer_times_out(openai_fake: FakeOpenAI) -> None:
    openai_fake.script(Reply.slow(3))
    started = time.monotonic()
    with pytest.raises(ProviderTimeout) as caught:
        call(openai_fake, lambda provider: provider.chat(ask("hi")), timeout=0.3)
    assert time.monotonic() - started < 2.5
    assert caught.value.retryable
    assert caught.value.code == "provider_timeout"


def test_stream_that_stalls_times_out(openai_fake: FakeOpenAI) -> None:
    openai_fake.script(Reply(text="a slow answer", chunk_delay=2, chunk_size=2))
    with pytest.raises(ProviderTimeout):
        call(openai_fake, lambda provider: collect(provider, ask("hi")), timeout=0.3)


def test_malformed_bodies(openai_fake: FakeOpenAI) -> None:
    openai_fake.script(
        Reply.malformed(),  # not JSON
        Reply.malformed(b'{"id": "x", "object": "chat.completion", "choices": []}'),  # no answer in it
        Reply.malformed(b'{"id": "x", "choices": [{"index": 0}]}'),  # a choice without a message
    )
    for _ in range(3):
        with pytest.raises(MalformedResponse) as caught:
            call(openai_fake, lambda provider: provider.chat(ask("hi")))
        assert caught.value.retryable


def test_malformed_stream_event(openai_fake: FakeOpenAI) -> None:
    openai_fake.script(Reply.malformed(b'{"id": "x", "choices": [{"delta": '))
    with pytest.raises(MalformedResponse):
        call(openai_fake, lambda provider: collect(provider, ask("hi")))


def test_stream_cut_mid_answer_is_an_error_not_a_short_answer(openai_fake: FakeOpenAI) -> None:
    openai_fake.script(Reply(text="This answer will be cut off here", chunk_size=4, cut_after_events=3))
    received: list[str] = []

    async def work(provider: Provider) -> None:
        async for chunk in provider.stream(ask("hi")):
            received.append(chunk.text)

    with pytest.raises((ProviderUnavailable, MalformedResponse)):
        call(openai_fake, work)
    assert "".join(received) == "This ans"  # what came before the cut, and no finish


def test_dropped_connection_and_nothing_listening(openai_fake: FakeOpenAI) -> None:
    openai_fake.script(Reply(drop=True))
    with pytest.raises(ProviderUnavailable):
        call(openai_fake, lambda provider: provider.chat(ask("hi")))

    async def refused() -> None:
        provider = OpenAIProvider(
            ProviderConfig(kind="openai", api_key="k", base_url="http://127.0.0.1:9/v1")
        )
        try:
            await provider.chat(ask("hi"))
        finally:
            await provider.close()

    with pytest.raises(ProviderUnavailable) as caught:
        asyncio.run(refused())
    assert "could not be reached" in caught.value.message


def test_wrong_key_is_an_authentication_failure(openai_fake: FakeOpenAI) -> None:
    openai_fake.api_key = "sk-right"
    with pytest.raises(AuthenticationFailed) as caught:
        call(openai_fake, lambda provider: provider.chat(ask("hi")))
    assert not caught.value.retryable
    assert caught.value.status == 403
    assert "Incorrect API key" in caught.value.message


def test_context_length_error_and_other_rejections(openai_fake: FakeOpenAI) -> None:
    openai_fake.script(
        Reply.error(
            400,
            "This model's maximum context length is 128000 tokens."
            " However, your messages resulted in 130001 tokens.",
            code="context_length_exceeded",
        ),
        Reply.error(400, "Invalid value for 'temperature'", code="invalid_value"),
        Reply.error(404, "The model 'gpt-9' does not exist", code="model_not_found"),
    )
    with pytest.raises(ContextWindowExceeded) as caught:
        call(openai_fake, lambda provider: provider.chat(ask("long")))
    assert caught.value.code == "context_window_exceeded"
    assert "maximum context length is 128000" in caught.value.message
    for expected in ("temperature", "gpt-9"):
        with pytest.raises(InvalidProviderRequest) as rejected:
            call(openai_fake, lambda provider: provider.chat(ask("hi")))
        assert expected in rejected.value.message
        assert not rejected.value.retryable


def test_embeddings(openai_fake: FakeOpenAI) -> None:
    texts = ["the cat sat on the mat", "The cat sat on the mat!", "quarterly revenue grew"]
    response = call(openai_fake, lambda provider: provider.embed("text-embedding-3-small", texts))
    assert response.provider == "openai"
    assert len(response.vectors) == 3
    assert all(len(vector) == 64 for vector in response.vectors)

    def cosine(a: tuple[float, ...], b: tuple[float, ...]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cosine(response.vectors[0], response.vectors[1]) > 0.99
    assert cosine(response.vectors[0], response.vectors[2]) < 0.5
    assert response.usage.input_tokens > 0
    assert openai_fake.requests_to("/embeddings")[0].json["input"] == texts


def test_embeddings_failure_and_mismatch(openai_fake: FakeOpenAI) -> None:
    openai_fake.script(
        Reply.error(429, "slow", retry_after=1), Reply(vectors=[[0.1, 0.2]]), endpoint="embeddings"
    )
    with pytest.raises(RateLimited):
        call(openai_fake, lambda provider: provider.embed("text-embedding-3-small", ["a", "b"]))
    with pytest.raises(MalformedResponse):
        call(openai_fake, lambda provider: provider.embed("text-embedding-3-small", ["a", "b"]))


def test_token_count_is_an_estimate_in_the_right_range() -> None:
    provider = OpenAIProvider(ProviderConfig(kind="openai", api_key="k"))
    messages = (Message(role="user", content="The quick brown fox jumps over the lazy dog. " * 20),)
    # About 10 tokens a sentence, plus the message overhead.
    assert 200 <= provider.count_tokens("gpt-4o-mini", messages) <= 240
    assert provider.count_tokens("gpt-4o-mini", ()) < 5


def test_tool_call_type_is_the_same_for_every_path(openai_fake: FakeOpenAI) -> None:
    openai_fake.script(Reply.tool("get_weather", '{"city": "Oslo"}'))
    response = call(openai_fake, lambda provider: provider.chat(ask("Oslo?", tools=(WEATHER,))))
    assert isinstance(response.message.tool_calls[0], ToolCall)
    assert response.message.tool_calls[0].arguments == '{"city": "Oslo"}'


def test_error_event_in_the_middle_of_a_stream(openai_fake: FakeOpenAI) -> None:
    openai_fake.script(
        Reply(text="Half an answer and then", chunk_size=4, stream_error_after=3, error_message="overloaded"),
        Reply(
            text="x",
            stream_error_after=0,
            stream_error_status=400,
            error_message="This model's maximum context length is 4096 tokens.",
        ),
    )
    received: list[str] = []

    async def work(provider: Provider) -> None:
        async for chunk in provider.stream(ask("hi")):
            received.append(chunk.text)

    with pytest.raises(ProviderUnavailable) as caught:
        call(openai_fake, work)
    assert "overloaded" in caught.value.message
    assert "".join(received) == "Half an "
    with pytest.raises(ContextWindowExceeded):
        call(openai_fake, lambda provider: collect(provider, ask("hi")))


def test_refusal_reads_as_a_content_filter(openai_fake: FakeOpenAI) -> None:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "refusal": "I can't help with that."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11},
    }
    openai_fake.script(Reply(raw_body=json.dumps(body).encode()))
    response = call(openai_fake, lambda provider: provider.chat(ask("something bad")))
    assert response.finish_reason == "content_filter"
    assert response.message.content == "I can't help with that."


def test_overloaded_server_may_say_when_to_come_back(openai_fake: FakeOpenAI) -> None:
    openai_fake.script(Reply.error(503, "Service Unavailable", retry_after=5))
    with pytest.raises(ProviderUnavailable) as caught:
        call(openai_fake, lambda provider: provider.chat(ask("hi")))
    assert caught.value.retry_after == 5


def test_the_fake_serves_the_model_list_to_the_sdk(openai_fake: FakeOpenAI) -> None:
    async def names(provider: Provider) -> list[str]:
        assert isinstance(provider, OpenAIProvider)
        return [model.id async for model in provider.client.models.list()]

    assert call(openai_fake, names) == ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]
    openai_fake.record = False
    call(openai_fake, lambda provider: provider.chat(ask("not recorded")))
    assert len(openai_fake.requests) == 1


def test_json_mode_says_json_when_the_conversation_does_not(openai_fake: FakeOpenAI) -> None:
    # OpenAI refuses json_object unless the messages mention JSON: the provider adds the words.
    openai_fake.script(Reply(text='{"capital": "Paris"}'), Reply(text='{"capital": "Paris"}'))
    call(openai_fake, lambda provider: provider.chat(ask("Capital of France?", response_format="json")))
    call(
        openai_fake, lambda provider: provider.chat(ask("Capital of France, as json", response_format="json"))
    )
    first, second = (request.json["messages"] for request in openai_fake.chat_requests)
    assert first[0] == {
        "role": "system",
        "content": "Be brief.\n\nAnswer with one JSON object only, no text before or after it.",
    }
    assert second[0] == {"role": "system", "content": "Be brief."}
