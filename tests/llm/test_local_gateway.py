"""The platform with no API key at all: every organization can call the local model
through the gateway, and the catalog describes the model the provider really loads."""

import jsonschema
import pytest
from asgiref.sync import async_to_sync

from apps.llm.gateway import gateway, gateway_reset
from apps.llm.models import LlmModel
from apps.llm.providers.base import ProviderConfig
from apps.llm.providers.local import LocalProvider
from apps.llm.types import CallContext, ChatRequest, Message, Tool
from tests.llm.gateway_helpers import stream

pytestmark = pytest.mark.django_db

WEATHER = Tool(
    name="get_weather",
    description="The current weather in a city",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
)


@pytest.fixture
def no_keys(settings):
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY"):
        setattr(settings, name, "")
    gateway_reset()


def ask(text: str, **fields) -> ChatRequest:
    fields.setdefault("temperature", 0)
    fields.setdefault("max_tokens", 16)
    return ChatRequest(model="local", messages=(Message(role="user", content=text),), **fields)


def test_an_organization_without_any_key_chats_with_the_local_model(world, no_keys):
    response = async_to_sync(gateway().chat)(
        ask("What is the capital of France? Answer in one word."),
        context=CallContext(organization_id=world.alpha.pk, user_id=world.amy.pk),
    )
    assert "Paris" in (response.message.content or "")
    assert response.provider == "local"
    assert response.route["model"] == "smollm2-135m"
    assert response.route["provider"] == "local"
    assert response.usage.input_tokens > 0
    assert response.usage.output_tokens > 0
    assert response.route["cost_usd"] == 0


def test_a_forced_tool_call_through_the_gateway_is_a_valid_tool_call(world, no_keys):
    request = ask("What's the weather in Paris?", tools=(WEATHER,), tool_choice="get_weather", max_tokens=40)
    response = async_to_sync(gateway().chat)(request, context=CallContext(organization_id=world.beta.pk))
    assert response.finish_reason == "tool_calls"
    (call,) = response.message.tool_calls
    assert call.name == "get_weather"
    jsonschema.validate(call.parsed_arguments(), WEATHER.parameters)


def test_streaming_through_the_gateway_yields_text_then_the_finish(world, no_keys):
    chunks, error = stream(ask("Say hello."), CallContext(organization_id=world.alpha.pk))
    assert error is None
    assert "".join(chunk.text for chunk in chunks)
    assert chunks[-1].finish_reason in ("stop", "length")


def test_the_catalogs_context_window_is_the_one_the_local_model_loads_with(world):
    entry = LlmModel.objects.get(name="smollm2-135m")
    assert entry.provider == "local"
    provider = LocalProvider(ProviderConfig(kind="local"))
    assert provider.model.llama().n_ctx() == entry.context_window
