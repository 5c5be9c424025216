"""Context management with the platform's own local model, for real: counts in
SmolLM2's tokenizer and chat template (llama.cpp), and condensation whose summary
SmolLM2 writes through the gateway (no API key anywhere)."""

import pytest
from asgiref.sync import async_to_sync

from apps.llm.context import (
    SUMMARY_NAME,
    TokenCounter,
    condense,
    counter_for,
    gateway_summarizer,
    sliding_window,
)
from apps.llm.providers.base import ProviderConfig
from apps.llm.providers.registry import make_provider
from apps.llm.types import CallContext, Message
from tests.conftest import World
from tests.llm.test_context import SYSTEM, TASK, agent_conversation, assert_tool_pairs_intact, step

pytestmark = pytest.mark.django_db

MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def exact_count() -> TokenCounter:
    return counter_for(make_provider(ProviderConfig(kind="local")), MODEL)


def test_the_window_fits_by_the_model_s_own_token_count(exact_count: TokenCounter) -> None:
    conversation = agent_conversation(12)
    assert exact_count(conversation) > 1500
    window = sliding_window(conversation, max_tokens=1000, count_tokens=exact_count)
    assert exact_count(window.messages) == window.tokens <= 1000
    assert window.messages[:2] == (SYSTEM, TASK)
    assert window.messages[-1] == conversation[-1]
    assert_tool_pairs_intact(window.messages)

    huge = [SYSTEM, TASK, *step(1, "cat build.log", "compiling module\n" * 2000)]
    cut = sliding_window(huge, max_tokens=600, count_tokens=exact_count)
    assert cut.truncated == 1
    assert exact_count(cut.messages) <= 600
    assert "characters truncated" in (cut.messages[-1].content or "")


def test_smollm2_summarizes_the_dropped_steps_through_the_gateway(
    world: World, exact_count: TokenCounter
) -> None:
    summarize = gateway_summarizer(
        model=MODEL,
        context=CallContext(organization_id=world.alpha.pk, priority="batch"),
        max_words=60,
        max_output_tokens=60,
        input_tokens=1500,
        count_tokens=exact_count,
    )
    conversation = [SYSTEM, TASK]
    for number in range(1, 9):
        conversation += step(number, f"sed -n {number},+10p src/parser.py", f"line {number}\n" * 15)
    conversation.append(Message(role="user", content="What is left to do?"))
    assert exact_count(conversation) > 600
    result = async_to_sync(condense)(
        conversation, max_tokens=600, count_tokens=exact_count, summarize=summarize
    )

    assert result.summary_error == ""
    assert result.summary is not None
    text = (result.summary.content or "").split("\n", 1)[1]
    assert len(text.split()) >= 3, text  # words the model wrote
    assert (result.summary.role, result.summary.name, result.summary.pinned) == ("user", SUMMARY_NAME, True)
    assert result.messages[:3] == (SYSTEM, TASK, result.summary)
    assert result.dropped
    assert exact_count(result.messages) == result.tokens <= 600
    assert_tool_pairs_intact(result.messages)
    assert result.messages[-1] == Message(role="user", content="What is left to do?")
