"""The router: `auto` picks a cheap model for simple requests and a strong one for hard
ones, follows the organization's policy, and learns from observed errors."""

import pytest

from apps.llm import services
from apps.llm.errors import ModelDisabled
from apps.llm.gateway import gateway
from apps.llm.router import classify_request
from apps.llm.types import CallContext, ChatRequest, Message, Tool
from apps.tenancy.audit import Actor
from tests.fakes.llm_fake import Reply
from tests.llm.gateway_helpers import ask, chat

pytestmark = pytest.mark.django_db

WEATHER = Tool(
    name="get_weather",
    description="The weather in a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


@pytest.mark.parametrize(
    ("text", "hard"),
    [
        ("What's the capital of Peru?", False),
        ("Translate 'good morning' into Spanish.", False),
        ("Why does this fail?\n```python\nprint(1/0)\n```", True),
        ("def add(a, b):\n    return a + b\nclass Point:\n    pass", True),
        ("Please debug my build: it hangs at the link step.", True),
        ("Explain step by step how TLS works.", True),
        ("word " * 3000, True),
    ],
)
def test_the_auto_heuristic(text, hard):
    request = ask("auto", text)
    assert classify_request(request, prompt_tokens=len(text) // 4)[0] is hard


def test_tools_and_structured_output_make_a_request_hard():
    assert classify_request(ask("auto", "hi", tools=(WEATHER,)), 5) == (True, "tools offered")
    structured = ask("auto", "hi", response_format="json", json_schema={"type": "object"})
    assert classify_request(structured, 5)[0] is True
    many = ChatRequest(model="auto", messages=tuple(Message(role="user", content="hi") for _ in range(9)))
    assert classify_request(many, 50)[0] is True


def test_auto_sends_a_simple_request_to_the_cheapest_small_model(world, openai_platform):
    response = chat(ask("auto", "What's the capital of Peru?"), CallContext(organization_id=world.alpha.pk))
    # Only OpenAI has credentials: of its small chat models gpt-4.1-nano costs least.
    assert response.route["model"] == "gpt-4.1-nano"
    assert response.route["requested"] == "auto"
    assert response.route["reason"].startswith(
        "auto: simple request (short, no tools, no code) -> small tier"
    )
    assert openai_platform.chat_requests[0].json["model"] == "gpt-4.1-nano"


def test_auto_sends_a_hard_request_to_a_large_model(world, openai_platform):
    response = chat(
        ask("auto", "Refactor this:\n```js\nvar x = 1;\n```"), CallContext(organization_id=world.alpha.pk)
    )
    assert response.route["model"] == "o3-mini"  # the cheapest large OpenAI model
    assert "hard request (code in the prompt) -> large tier" in response.route["reason"]


def test_auto_follows_the_organizations_preferred_models_and_price_ceiling(world, openai_platform):
    actor = Actor(user=world.alice)
    services.routing_policy_set(organization=world.alpha, preferred_models=["gpt-4o-mini"], actor=actor)
    simple = chat(ask("auto", "hi there"), CallContext(organization_id=world.alpha.pk))
    assert simple.route["model"] == "gpt-4o-mini"
    assert "preferred" in simple.route["reason"]
    # A ceiling of 5 USD per million output tokens rules out every large OpenAI model but o3-mini.
    services.routing_policy_set(organization=world.alpha, max_output_price="5", actor=actor)
    hard = chat(
        ask("auto", "Prove that there are infinitely many primes."),
        CallContext(organization_id=world.alpha.pk),
    )
    assert hard.route["model"] == "o3-mini"
    with pytest.raises(ModelDisabled, match="price ceiling"):
        chat(ask("gpt-4o", "hi"), CallContext(organization_id=world.alpha.pk))


def test_auto_skips_models_the_organization_disabled(world, openai_platform):
    services.model_access_set(
        organization=world.alpha, model_name="gpt-4.1-nano", enabled=False, actor=Actor(user=world.alice)
    )
    response = chat(ask("auto", "hello"), CallContext(organization_id=world.alpha.pk))
    assert response.route["model"] == "gpt-4o-mini"


def test_auto_with_no_credentials_at_all_uses_the_local_model(world, settings):
    settings.OPENAI_API_KEY = ""
    settings.ANTHROPIC_API_KEY = ""
    settings.GEMINI_API_KEY = ""
    estimate = gateway().estimate_cost(
        ask("auto", "hello"), context=CallContext(organization_id=world.alpha.pk)
    )
    assert estimate["model"] == "smollm2-135m"
    assert estimate["usd_high"] == 0.0


def test_a_fallback_that_keeps_failing_moves_to_the_back_of_the_chain(world, openai_platform, settings):
    settings.LLM_RETRY_ATTEMPTS = 0
    services.routing_policy_set(
        organization=world.alpha,
        fallbacks={"gpt-4o-mini": ["gpt-4.1-mini", "gpt-4.1-nano"]},
        actor=Actor(user=world.alice),
    )
    context = CallContext(organization_id=world.alpha.pk, cache=False)
    stats = gateway().router.stats
    for _ in range(3):
        stats.record("gpt-4.1-mini", ok=False)
    openai_platform.script(Reply.error(500, "down"), Reply(text="nano serves"))
    response = chat(ask("gpt-4o-mini"), context)
    assert response.route["model"] == "gpt-4.1-nano"
    assert stats.error_rate("gpt-4.1-mini") > 0.5
    assert stats.latency_ms("gpt-4.1-nano") is not None
