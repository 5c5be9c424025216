"""Anthropic prompt caching: the provider marks a long stable prefix with cache_control
(the last tool, the system prompt, the last block before the newest user turn), the
fake Anthropic API caches it as the real one does, and a repeat is metered at the
catalog's cached price. Through the real `anthropic` SDK."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from apps.llm.gateway import gateway_reset
from apps.llm.metering import meter
from apps.llm.models import UsageDaily
from apps.llm.providers.base import ProviderConfig
from apps.llm.providers.registry import make_provider
from apps.llm.types import CallContext, ChatRequest, ChatResponse, Message, Tool, ToolCall
from tests.conftest import World
from tests.fakes.anthropic_server import FakeAnthropic
from tests.llm.gateway_helpers import chat, stream

EPHEMERAL = {"type": "ephemeral"}
# About 7,000 tokens: over the 1,024 Anthropic caches at the least (2,048 for Haiku).
HANDBOOK = " ".join(
    f"Rule {n}: answer the customer politely, cite the page of the handbook, never guess a price."
    for n in range(300)
)
WEATHER = Tool(
    name="get_weather",
    description="The weather in a city now",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def conversation(*turns: str, system: str = HANDBOOK) -> tuple[Message, ...]:
    """System, then user and assistant turns alternating (a user turn last)."""
    roles = ["user", "assistant"]
    return (
        Message(role="system", content=system),
        *(Message(role=roles[index % 2], content=text) for index, text in enumerate(turns)),  # type: ignore[arg-type]
    )


def provider_chat(fake: FakeAnthropic, request: ChatRequest) -> ChatResponse:
    async def main() -> ChatResponse:
        provider = make_provider(
            ProviderConfig(kind="anthropic", api_key="sk-ant-test", base_url=fake.base_url)
        )
        try:
            return await provider.chat(request)
        finally:
            await provider.close()

    return asyncio.run(main())


def sonnet(messages: tuple[Message, ...], **fields: Any) -> ChatRequest:
    return ChatRequest(
        model="claude-sonnet-4", provider_model="claude-sonnet-4-20250514", messages=messages, **fields
    )


@pytest.fixture
def anthropic_platform(settings: Any, anthropic_fake: FakeAnthropic) -> FakeAnthropic:
    settings.ANTHROPIC_API_KEY = "sk-ant-test"
    settings.ANTHROPIC_BASE_URL = anthropic_fake.base_url
    settings.OPENAI_API_KEY = ""
    settings.GEMINI_API_KEY = ""
    settings.LLM_METERING_FLUSH_SECONDS = 3600
    gateway_reset()
    return anthropic_fake


# --- where the marks go ---------------------------------------------------------------------------


def test_a_long_system_prompt_and_the_conversation_so_far_are_marked(anthropic_fake: FakeAnthropic) -> None:
    request = sonnet(conversation("Where is my order?", "Which order number?", "It is 1234."))
    provider_chat(anthropic_fake, request)
    sent = anthropic_fake.message_requests[0].json
    assert sent["system"] == [{"type": "text", "text": HANDBOOK, "cache_control": EPHEMERAL}]
    # The last block before the newest user turn ends the conversation's cached prefix.
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Where is my order?"}]},
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "Which order number?", "cache_control": EPHEMERAL}],
        },
        {"role": "user", "content": [{"type": "text", "text": "It is 1234."}]},
    ]


def test_long_tool_definitions_are_marked_after_the_last_tool(anthropic_fake: FakeAnthropic) -> None:
    manual = Tool(
        name="search_manual",
        description=HANDBOOK,  # a tool whose description alone is long enough to cache
        parameters={"type": "object", "properties": {"query": {"type": "string"}}},
    )
    request = sonnet(conversation("Hi", system="Be brief."), tools=(WEATHER, manual))
    provider_chat(anthropic_fake, request)
    sent = anthropic_fake.message_requests[0].json
    assert "cache_control" not in sent["tools"][0]
    assert sent["tools"][1]["cache_control"] == EPHEMERAL
    # The system prompt after the tools extends a prefix that is long enough: marked too.
    assert sent["system"] == [{"type": "text", "text": "Be brief.", "cache_control": EPHEMERAL}]


def test_an_agent_turn_with_tool_results_marks_the_tool_call_before_them(
    anthropic_fake: FakeAnthropic,
) -> None:
    call = ToolCall(id="toolu_1", name="get_weather", arguments='{"city": "Paris"}')
    request = sonnet(
        (
            Message(role="system", content=HANDBOOK),
            Message(role="user", content="Weather in Paris?"),
            Message(role="assistant", content=None, tool_calls=(call,)),
            Message(role="tool", content="18 C, sunny", tool_call_id="toolu_1"),
        ),
        tools=(WEATHER,),
    )
    provider_chat(anthropic_fake, request)
    sent = anthropic_fake.message_requests[0].json
    assert sent["messages"][1]["content"][-1]["type"] == "tool_use"
    assert sent["messages"][1]["content"][-1]["cache_control"] == EPHEMERAL
    assert "cache_control" not in sent["messages"][2]["content"][-1]  # the newest turn: not yet
    assert "cache_control" not in sent["tools"][0]  # one short tool: too short a prefix alone
    assert FakeAnthropic.cache_marks(anthropic_fake.message_requests[0]) == 2


def test_a_short_prompt_is_sent_unmarked(anthropic_fake: FakeAnthropic) -> None:
    provider_chat(anthropic_fake, sonnet(conversation("Hi", "Hello!", "Bye", system="Be brief.")))
    sent = anthropic_fake.message_requests[0]
    assert sent.json["system"] == "Be brief."
    assert FakeAnthropic.cache_marks(sent) == 0


def test_haiku_needs_a_longer_prefix(anthropic_fake: FakeAnthropic) -> None:
    # About 1,400 tokens: enough for Sonnet (1,024), not for Haiku (2,048).
    medium = " ".join(f"Rule {n}: be polite and cite the handbook page." for n in range(100))
    provider_chat(anthropic_fake, sonnet(conversation("Hi", system=medium)))
    haiku = ChatRequest(
        model="claude-3-5-haiku",
        provider_model="claude-3-5-haiku-20241022",
        messages=conversation("Hi", system=medium),
    )
    provider_chat(anthropic_fake, haiku)
    to_sonnet, to_haiku = anthropic_fake.message_requests
    assert FakeAnthropic.cache_marks(to_sonnet) == 1
    assert FakeAnthropic.cache_marks(to_haiku) == 0


def test_the_setting_turns_prompt_caching_off(anthropic_fake: FakeAnthropic, settings: Any) -> None:
    settings.LLM_ANTHROPIC_PROMPT_CACHE = False
    provider_chat(anthropic_fake, sonnet(conversation("Where is my order?", "Which one?", "1234")))
    sent = anthropic_fake.message_requests[0]
    assert sent.json["system"] == HANDBOOK
    assert FakeAnthropic.cache_marks(sent) == 0


# --- what it saves ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_same_prefix_again_is_read_from_the_cache_and_metered_cheaper(
    world: World, anthropic_platform: FakeAnthropic
) -> None:
    context = CallContext(organization_id=world.alpha.pk, user_id=world.alice.pk, cache=False)
    first = chat(sonnet(conversation("Where is my order?")), context)
    second = chat(sonnet(conversation("Can I return a lamp?")), context)
    # Anthropic wrote the system prompt's prefix on the first call and read it on the second.
    assert first.usage.cached_tokens == 0
    assert second.usage.cached_tokens > 1024
    written = anthropic_platform.message_requests  # both carried the mark
    assert all(r.json["system"][0]["cache_control"] == EPHEMERAL for r in written)
    # Reads at the catalog's cached price, writes at Anthropic's 1.25x the input price
    # (claude-sonnet-4: 3.00 per million input tokens, 0.30 cached, 15.00 output).
    assert first.usage.cache_write_tokens > 1024
    assert second.usage.cache_write_tokens == 0
    for response in (first, second):
        usage = response.usage
        expected = (
            (usage.input_tokens - usage.cached_tokens) * 3.00
            + usage.cache_write_tokens * 3.00 * 0.25
            + usage.cached_tokens * 0.30
            + usage.output_tokens * 15.00
        ) / 1e6
        assert response.route["cost_usd"] == pytest.approx(expected)
    assert second.route["cost_usd"] < first.route["cost_usd"] / 3
    assert meter().flush() == 1
    row = UsageDaily.objects.get(organization=world.alpha, model="claude-sonnet-4")
    assert row.requests == 2
    assert row.cached_tokens == second.usage.cached_tokens
    assert float(row.cost_usd) == pytest.approx(first.route["cost_usd"] + second.route["cost_usd"])


@pytest.mark.django_db
def test_each_turn_of_a_conversation_reads_what_the_last_one_wrote(
    world: World, anthropic_platform: FakeAnthropic
) -> None:
    context = CallContext(organization_id=world.alpha.pk, cache=False)
    turn1 = chat(sonnet(conversation("Where is my order?")), context)
    turn2 = chat(sonnet(conversation("Where is my order?", "Which order number?", "It is 1234.")), context)
    turn3 = chat(
        sonnet(
            conversation(
                "Where is my order?", "Which order number?", "It is 1234.", "It ships today.", "Thanks!"
            )
        ),
        context,
    )
    assert turn1.usage.cached_tokens == 0
    # Turn 2 reads the system prompt; turn 3 also the first exchange, marked on turn 2.
    assert 0 < turn2.usage.cached_tokens < turn3.usage.cached_tokens
    assert turn3.usage.input_tokens - turn3.usage.cached_tokens < 40  # only the newest turns are new


@pytest.mark.django_db
def test_a_stream_reports_the_cache_read_in_its_usage(
    world: World, anthropic_platform: FakeAnthropic
) -> None:
    context = CallContext(organization_id=world.alpha.pk, cache=False)
    chat(sonnet(conversation("First question")), context)
    chunks, error = stream(sonnet(conversation("Second question")), context)
    assert error is None
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.cached_tokens > 1024
    assert usage.input_tokens > usage.cached_tokens
