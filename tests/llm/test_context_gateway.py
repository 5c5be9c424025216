"""Condensation through the gateway itself: the summary is asked of a real provider
(the official openai SDK against the loopback fake) with the platform's
context.summarize prompt, a long span goes piece by piece, and a provider that
fails leaves a conversation that still fits."""

import pytest
from asgiref.sync import async_to_sync

from apps.llm.context import SUMMARY_NAME, condense, default_summary_instructions, gateway_summarizer
from apps.llm.types import CallContext
from tests.conftest import World
from tests.fakes.llm_fake import Reply
from tests.fakes.openai_server import FakeOpenAI
from tests.llm.gateway_helpers import openai_platform  # noqa: F401 (a fixture)
from tests.llm.test_context import SYSTEM, TASK, agent_conversation, assert_tool_pairs_intact, count

# The platform's OpenAI key and base URL lead to the fake (openai_fake is the same server).
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("openai_platform")]

SUMMARY = "Read src/parser.py lines 1-12 with sed; nothing changed yet; the nested-key case is still open."


def test_the_dropped_steps_are_summarized_by_a_model_through_the_gateway(
    world: World, openai_fake: FakeOpenAI
) -> None:
    openai_fake.script(Reply(text=SUMMARY))
    summarize = gateway_summarizer(
        model="gpt-4o-mini", context=CallContext(organization_id=world.alpha.pk), input_tokens=50_000
    )
    conversation = agent_conversation(30)

    result = async_to_sync(condense)(conversation, max_tokens=3000, count_tokens=count, summarize=summarize)

    assert result.summary is not None
    assert result.summary.content == (
        "Summary of the earlier conversation (older messages were condensed):\n" + SUMMARY
    )
    assert result.messages[:3] == (SYSTEM, TASK, result.summary)
    assert result.tokens <= 3000
    assert_tool_pairs_intact(result.messages)

    (request,) = openai_fake.chat_requests
    sent = request.json
    assert sent.get("max_completion_tokens", sent.get("max_tokens")) == 400
    assert sent["temperature"] == 0
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    assert sent["messages"][0]["content"] == default_summary_instructions(200)
    asked = sent["messages"][1]["content"]
    assert asked.startswith("Conversation to condense:\n\n[assistant]\nStep 1: I will run sed -n 1,+40p")
    dropped_commands = [call.arguments for m in result.dropped for call in m.tool_calls]
    assert all(command in asked for command in dropped_commands)
    kept_commands = [call.arguments for m in result.messages for call in m.tool_calls]
    assert not any(command in asked for command in kept_commands)


def test_a_long_span_is_summarized_piece_by_piece_with_the_summary_so_far(
    world: World, openai_fake: FakeOpenAI
) -> None:
    openai_fake.script(*[Reply(text=f"Summary after piece {n}.") for n in range(1, 21)])
    summarize = gateway_summarizer(
        model="gpt-4o-mini", context=CallContext(organization_id=world.alpha.pk), input_tokens=1200
    )
    result = async_to_sync(condense)(
        agent_conversation(30), max_tokens=3000, count_tokens=count, summarize=summarize
    )
    asked = [request.json["messages"][1]["content"] for request in openai_fake.chat_requests]
    assert len(asked) >= 3
    assert asked[0].startswith("Conversation to condense:\n\n[assistant]\nStep 1:")
    for number, question in enumerate(asked[1:], start=1):
        assert question.startswith(
            f"Summary so far:\nSummary after piece {number}.\n\nConversation to condense:"
        )
    assert result.summary is not None
    assert (result.summary.content or "").endswith(f"\nSummary after piece {len(asked)}.")
    # Each piece carries different steps, all of the span once.
    dropped_commands = [call.arguments for m in result.dropped for call in m.tool_calls]
    assert sum(sum(command in question for question in asked) for command in dropped_commands) == len(
        dropped_commands
    )


def test_a_failing_provider_drops_the_span_without_a_summary(world: World, openai_fake: FakeOpenAI) -> None:
    openai_fake.script(*[Reply.error(500, "upstream exploded") for _ in range(10)])
    summarize = gateway_summarizer(model="gpt-4o-mini", context=CallContext(organization_id=world.alpha.pk))
    result = async_to_sync(condense)(
        agent_conversation(30), max_tokens=2500, count_tokens=count, summarize=summarize
    )
    assert result.summary is None
    assert "upstream exploded" in result.summary_error or "provider" in result.summary_error
    assert result.tokens <= 2500
    assert not any(m.name == SUMMARY_NAME for m in result.messages)
    assert_tool_pairs_intact(result.messages)
