"""The gateway's contract: which model serves, refusals with a reason, and the route."""

from decimal import Decimal
from io import StringIO

import pytest
from asgiref.sync import async_to_sync
from django.core.management import call_command

from apps.core.errors import Invalid
from apps.llm import services
from apps.llm.errors import InvalidTool, MissingCredentials, ModelDisabled, UnknownModel
from apps.llm.gateway import chat_sync, gateway
from apps.llm.metering import meter
from apps.llm.models import LlmModel, ProviderCredential, UsageDaily
from apps.llm.types import CallContext, ChatRequest, Tool
from apps.tenancy.audit import Actor
from apps.tenancy.models import AuditEvent
from tests.fakes.llm_fake import Reply
from tests.llm.gateway_helpers import ask, chat, stream

pytestmark = pytest.mark.django_db


def test_the_catalog_is_loaded_by_the_migration_and_the_local_model_is_there(world):
    names = set(LlmModel.objects.values_list("name", flat=True))
    assert {"smollm2-135m", "gpt-4o-mini", "claude-3-5-haiku", "gemini-2.0-flash"} <= names
    local = LlmModel.objects.get(name="smollm2-135m")
    assert local.provider == "local"
    assert local.enabled_by_default


def test_an_unknown_model_is_refused_naming_it(world):
    with pytest.raises(UnknownModel) as caught:
        chat(ask("gpt-17"), CallContext(organization_id=world.alpha.pk))
    assert "'gpt-17'" in caught.value.message
    assert caught.value.status == 400


def test_a_model_disabled_for_the_organization_is_refused_for_it_only(world, settings):
    settings.OPENAI_API_KEY = ""
    services.model_access_set(
        organization=world.alpha, model_name="smollm2-135m", enabled=False, actor=Actor(user=world.alice)
    )
    with pytest.raises(ModelDisabled) as caught:
        chat(ask("local"), CallContext(organization_id=world.alpha.pk))
    assert caught.value.status == 403
    assert "disabled" in caught.value.message
    models = {row["name"]: row for row in async_to_sync(gateway().models)(organization_id=world.beta.pk)}
    assert models["smollm2-135m"]["enabled"] is True


def test_missing_credentials_are_refused_before_anything_is_sent(world, settings):
    settings.OPENAI_API_KEY = ""
    with pytest.raises(MissingCredentials) as caught:
        chat(ask("gpt-4o-mini"), CallContext(organization_id=world.alpha.pk))
    assert caught.value.status == 403
    assert "openai" in caught.value.message


# --- through the real openai SDK against the loopback fake ------------------------------------


def test_a_call_is_answered_and_its_route_says_who_served_and_why(world, openai_platform):
    openai_platform.script(Reply(text="Hi Alice", usage=(1200, 300, 200)))
    response = chat(
        ask("gpt-4o-mini", "Hi"), CallContext(organization_id=world.alpha.pk, user_id=world.alice.pk)
    )
    assert response.message.content == "Hi Alice"
    assert response.model == "gpt-4o-mini"
    assert response.provider == "openai"
    route = response.route
    assert (route["model"], route["provider"], route["reason"], route["cache"]) == (
        "gpt-4o-mini",
        "openai",
        "requested",
        None,
    )
    assert route["cost_usd"] == pytest.approx((1000 * 0.15 + 200 * 0.075 + 300 * 0.60) / 1e6)
    assert route["latency_ms"] > 0
    assert route["attempts"] == [{"model": "gpt-4o-mini", "outcome": "ok"}]
    sent = openai_platform.chat_requests[0]
    assert sent.headers["authorization"] == "Bearer sk-platform-test"
    assert sent.json["model"] == "gpt-4o-mini"


def test_tool_calls_come_back_in_the_common_shape(world, openai_platform):
    weather = Tool(
        name="get_weather",
        description="The weather in a city",
        parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    )
    openai_platform.script(Reply.tool("get_weather", {"city": "Paris"}))
    response = chat(
        ask("gpt-4o-mini", "Weather in Paris?", tools=(weather,), tool_choice="get_weather"),
        CallContext(organization_id=world.alpha.pk),
    )
    assert response.finish_reason == "tool_calls"
    assert response.message.tool_calls[0].name == "get_weather"
    assert response.message.tool_calls[0].parsed_arguments() == {"city": "Paris"}


@pytest.mark.parametrize(
    ("tool", "message"),
    [
        (
            Tool(name="bad name!", description="", parameters={"type": "object"}),
            "Tool name 'bad name!' is invalid",
        ),
        (
            Tool(name="t", description="", parameters={"type": "string"}),
            "must be a JSON Schema of type object",
        ),
        (
            Tool(name="t", description="", parameters={"type": "object", "properties": {"a": {"type": 12}}}),
            "not a valid JSON Schema",
        ),
    ],
)
def test_an_invalid_tool_is_a_400_and_nothing_is_sent(world, openai_platform, tool, message):
    with pytest.raises(InvalidTool) as caught:
        chat(ask("gpt-4o-mini", tools=(tool,)), CallContext(organization_id=world.alpha.pk))
    assert caught.value.status == 400
    assert message in caught.value.message
    assert openai_platform.chat_requests == []


def test_tool_choice_must_name_an_offered_tool(world, openai_platform):
    tool = Tool(name="search", description="", parameters={"type": "object"})
    with pytest.raises(InvalidTool, match="'fetch', which is not among the tools"):
        chat(
            ask("gpt-4o-mini", tools=(tool,), tool_choice="fetch"),
            CallContext(organization_id=world.alpha.pk),
        )


def test_bad_parameters_are_a_400(world, openai_platform):
    with pytest.raises(Invalid, match="temperature"):
        chat(ask("gpt-4o-mini", temperature=7.0), CallContext(organization_id=world.alpha.pk))
    with pytest.raises(Invalid, match="at least one message"):
        chat(ChatRequest(model="gpt-4o-mini", messages=()), CallContext(organization_id=world.alpha.pk))
    assert openai_platform.chat_requests == []


def test_an_organizations_own_key_is_used_and_stored_encrypted(world, openai_fake, settings):
    settings.OPENAI_API_KEY = ""
    services.credential_set(
        organization=world.alpha,
        provider="openai",
        api_key="sk-alpha-own-key-123",
        base_url=openai_fake.base_url,
        actor=Actor(user=world.alice),
    )
    response = chat(ask("gpt-4o-mini"), CallContext(organization_id=world.alpha.pk))
    assert response.route["model"] == "gpt-4o-mini"
    assert openai_fake.chat_requests[0].headers["authorization"] == "Bearer sk-alpha-own-key-123"
    stored = ProviderCredential.objects.get(organization=world.alpha, provider="openai")
    assert "sk-alpha" not in stored.api_key_encrypted
    assert stored.api_key_hint == "…-123"
    # Beta has no key of its own and the platform none either.
    with pytest.raises(MissingCredentials):
        chat(ask("gpt-4o-mini"), CallContext(organization_id=world.beta.pk))
    assert AuditEvent.objects.filter(organization=world.alpha, action="llm.credential_set").exists()
    event = AuditEvent.objects.get(organization=world.alpha, action="llm.credential_set")
    assert "sk-alpha-own-key-123" not in str(event.changes)


def test_credentials_are_validated(world):
    actor = Actor(user=world.alice)
    with pytest.raises(Invalid, match="Unknown provider"):
        services.credential_set(organization=world.alpha, provider="skynet", api_key="k", actor=actor)
    with pytest.raises(Invalid, match="needs no credentials"):
        services.credential_set(organization=world.alpha, provider="local", api_key="k", actor=actor)
    with pytest.raises(Invalid, match="http"):
        services.credential_set(
            organization=world.alpha, provider="openai", api_key="k", base_url="ftp://x", actor=actor
        )
    with pytest.raises(Invalid, match="needs a base URL"):
        services.credential_set(
            organization=world.alpha, provider="openai_compatible", api_key="", actor=actor
        )


def test_an_openai_compatible_server_of_the_organization_serves_through_its_base_url(
    world, openai_fake, settings
):
    """A catalog entry for a self-hosted model is one row; its server is the organization's."""
    LlmModel.objects.create(
        name="llama-3-8b-self-hosted",
        provider="openai_compatible",
        provider_model="meta-llama/Meta-Llama-3-8B-Instruct",
        context_window=8192,
        enabled_by_default=True,
    )
    services.credential_set(
        organization=world.alpha,
        provider="openai_compatible",
        api_key="",
        base_url=openai_fake.base_url,
        actor=Actor(user=world.alice),
    )
    response = chat(ask("llama-3-8b-self-hosted"), CallContext(organization_id=world.alpha.pk))
    assert response.provider == "openai_compatible"
    assert openai_fake.chat_requests[0].json["model"] == "meta-llama/Meta-Llama-3-8B-Instruct"
    with pytest.raises(MissingCredentials):
        chat(ask("llama-3-8b-self-hosted"), CallContext(organization_id=world.beta.pk))


def test_streaming_yields_text_then_a_final_chunk_with_usage(world, openai_platform):
    openai_platform.script(Reply(text="one two three four", usage=(12, 4, 0)))
    chunks, error = stream(ask("gpt-4o-mini"), CallContext(organization_id=world.alpha.pk))
    assert error is None
    assert "".join(c.text for c in chunks) == "one two three four"
    assert len(chunks) > 2
    assert chunks[-1].finish_reason == "stop"
    meter().flush()
    row = UsageDaily.objects.get(organization=world.alpha)
    assert (row.requests, row.input_tokens, row.output_tokens) == (1, 12, 4)


def test_embeddings_are_served_and_metered(world, openai_platform):
    response = async_to_sync(gateway().embed)(
        "text-embedding-3-small", ["alpha beta", "gamma"], context=CallContext(organization_id=world.alpha.pk)
    )
    assert response.model == "text-embedding-3-small"
    assert len(response.vectors) == 2
    meter().flush()
    assert UsageDaily.objects.get(organization=world.alpha, model="text-embedding-3-small").requests == 1
    with pytest.raises(UnknownModel, match="Embedding models in the catalog"):
        async_to_sync(gateway().embed)(
            "gpt-4o-mini", ["x"], context=CallContext(organization_id=world.alpha.pk)
        )
    with pytest.raises(Invalid):
        async_to_sync(gateway().embed)(
            "text-embedding-3-small", [], context=CallContext(organization_id=world.alpha.pk)
        )


def test_models_lists_the_catalog_as_the_organization_sees_it(world, openai_platform):
    models = {row["name"]: row for row in async_to_sync(gateway().models)(organization_id=world.alpha.pk)}
    local = models["smollm2-135m"]
    assert local["provider"] == "local"
    assert local["aliases"] == ["local"]
    assert local["enabled"]
    assert local["credentials"]
    mini = models["gpt-4o-mini"]
    assert mini["context_window"] == 128_000
    assert mini["capabilities"]["tools"] is True
    assert mini["prices"]["input_per_million"] == 0.15
    assert models["claude-3-5-haiku"]["credentials"] is False


def test_chat_sync_serves_sync_callers(world, openai_platform):
    response = chat_sync(
        ask("gpt-4o-mini", "from a task"), context=CallContext(organization_id=world.alpha.pk)
    )
    assert response.message.content == "Echo: from a task"


def test_the_catalog_sync_is_idempotent_and_unlists_removed_models(world):
    LlmModel.objects.create(name="retired-model", provider="openai", provider_model="x", context_window=1000)
    LlmModel.objects.filter(name="gpt-4o-mini").update(input_price="99")
    out = StringIO()
    call_command("llm_catalog_sync", stdout=out)
    assert "0 added, 1 updated, 1 no longer listed" in out.getvalue()
    assert LlmModel.objects.get(name="gpt-4o-mini").input_price == Decimal("0.15")
    assert LlmModel.objects.get(name="retired-model").listed is False
    out = StringIO()
    call_command("llm_catalog_sync", stdout=out)
    assert "0 added, 0 updated, 0 no longer listed" in out.getvalue()
    with pytest.raises(UnknownModel):
        chat(ask("retired-model"), CallContext(organization_id=world.alpha.pk))


@pytest.mark.parametrize(
    "base_url",
    [
        "http://127.0.0.1:8000/v1",
        "http://10.1.2.3/v1",
        "http://169.254.169.254/latest",
        "http://[::1]:9000",
        "http://localhost/v1",
    ],
)
def test_private_base_urls_can_be_refused(world, settings, base_url):
    settings.LLM_BLOCK_PRIVATE_BASE_URLS = True
    with pytest.raises(Invalid, match="private or local network"):
        services.credential_set(
            organization=world.alpha,
            provider="openai",
            api_key="sk-x",
            base_url=base_url,
            actor=Actor(user=world.alice),
        )
    assert not ProviderCredential.objects.filter(organization=world.alpha).exists()
    settings.LLM_BLOCK_PRIVATE_BASE_URLS = False  # the default: self-hosted servers on a private network work
    services.credential_set(
        organization=world.alpha,
        provider="openai",
        api_key="sk-x",
        base_url=base_url,
        actor=Actor(user=world.alice),
    )


def test_a_model_off_by_default_can_be_enabled_for_one_organization(world, openai_platform):
    LlmModel.objects.filter(name="gpt-4o").update(enabled_by_default=False)
    with pytest.raises(ModelDisabled):
        chat(ask("gpt-4o"), CallContext(organization_id=world.alpha.pk))
    services.model_access_set(
        organization=world.alpha, model_name="gpt-4o", enabled=True, actor=Actor(user=world.alice)
    )
    assert chat(ask("gpt-4o"), CallContext(organization_id=world.alpha.pk)).route["model"] == "gpt-4o"
    with pytest.raises(ModelDisabled):
        chat(ask("gpt-4o"), CallContext(organization_id=world.beta.pk))


def test_deleting_the_organizations_key_falls_back_to_the_platforms(world, openai_platform):
    services.credential_set(
        organization=world.alpha,
        provider="openai",
        api_key="sk-alpha-own",
        base_url=openai_platform.base_url,
        actor=Actor(user=world.alice),
    )
    chat(ask("gpt-4o-mini", "own key"), CallContext(organization_id=world.alpha.pk))
    services.credential_delete(organization=world.alpha, provider="openai", actor=Actor(user=world.alice))
    chat(ask("gpt-4o-mini", "platform key"), CallContext(organization_id=world.alpha.pk))
    keys = [r.headers["authorization"] for r in openai_platform.chat_requests]
    assert keys == ["Bearer sk-alpha-own", "Bearer sk-platform-test"]
