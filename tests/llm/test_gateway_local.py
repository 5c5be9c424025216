"""With no API key at all the platform still answers: the local SmolLM2 model through the
gateway (real llama.cpp), for plain chat, `auto`, a forced tool call and the semantic
cache's embeddings."""

from typing import Any

import pytest

from apps.llm.gateway import gateway_reset
from apps.llm.metering import meter
from apps.llm.models import UsageDaily
from apps.llm.types import CallContext, Tool
from tests.conftest import World
from tests.llm.gateway_helpers import ask, chat

pytestmark = pytest.mark.django_db


@pytest.fixture
def no_keys(settings: Any) -> None:
    settings.OPENAI_API_KEY = ""
    settings.ANTHROPIC_API_KEY = ""
    settings.GEMINI_API_KEY = ""
    gateway_reset()


def test_local_answers_with_no_key_and_costs_nothing(world: World, no_keys: None) -> None:
    context = CallContext(organization_id=world.alpha.pk, cache=False)
    response = chat(ask("local", "Say hello.", max_tokens=12, temperature=0), context)
    assert response.message.content
    assert response.route["model"] == "smollm2-135m"
    assert response.route["provider"] == "local"
    assert response.route["cost_usd"] == 0.0
    assert response.usage.input_tokens > 0
    meter().flush()
    row = UsageDaily.objects.get(organization=world.alpha, model="smollm2-135m")
    assert row.requests == 1
    assert row.cost_usd == 0


def test_auto_with_no_key_is_served_locally(world: World, no_keys: None) -> None:
    response = chat(
        ask("auto", "Hi!", max_tokens=8, temperature=0), CallContext(organization_id=world.alpha.pk)
    )
    assert response.route["model"] == "smollm2-135m"
    assert response.route["reason"].startswith("auto: simple request")


def test_a_forced_tool_call_comes_back_as_a_tool_call(world: World, no_keys: None) -> None:
    weather = Tool(
        name="get_weather",
        description="Get the current weather for a city",
        parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    )
    response = chat(
        ask(
            "local",
            "What's the weather in Paris?",
            tools=(weather,),
            tool_choice="get_weather",
            max_tokens=48,
        ),
        CallContext(organization_id=world.alpha.pk),
    )
    assert response.finish_reason == "tool_calls"
    call = response.message.tool_calls[0]
    assert call.name == "get_weather"
    assert isinstance(call.parsed_arguments()["city"], str)


def test_the_semantic_cache_works_with_the_local_embedder(world: World, no_keys: None, settings: Any) -> None:
    settings.LLM_SEMANTIC_CACHE_MODEL = "smollm2-135m-embedding"
    settings.LLM_SEMANTIC_CACHE_THRESHOLD = 0.9  # mean-pooled SmolLM2 states sit close together
    gateway_reset()
    context = CallContext(organization_id=world.alpha.pk, semantic_cache=True)
    first = chat(ask("local", "What is the capital of France?", max_tokens=8, temperature=0), context)
    assert first.route["cache"] is None
    reworded = chat(
        ask("local", "Which city is the capital of France?", max_tokens=8, temperature=0), context
    )
    assert reworded.route["cache"] == "l3"
    assert reworded.message.content == first.message.content
    other = chat(ask("local", "Write a haiku about rain", max_tokens=8, temperature=0), context)
    assert other.route["cache"] is None
