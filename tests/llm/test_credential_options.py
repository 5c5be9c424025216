"""An organization's OpenAI-compatible server is set with its quirks (server preset,
tool calls, JSON mode, usage in streams), through the API and the page, and the
gateway calls that server the way it was told."""

import json
from typing import Any

import pytest
from django.test import Client

from apps.llm import services
from apps.llm.models import LlmModel, ProviderCredential
from apps.llm.types import CallContext, ChatRequest, Message, Tool
from apps.tenancy.audit import Actor
from apps.tenancy.models import AuditEvent
from tests.conftest import World, client_for
from tests.fakes.llm_fake import Reply
from tests.fakes.openai_server import FakeOpenAI
from tests.llm.gateway_helpers import chat

pytestmark = pytest.mark.django_db

API = "/api/v1/llm"
WEATHER = Tool(
    name="get_weather",
    description="The weather in a city now",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
BLOCK = '```tool_call\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```'


def _self_hosted_model() -> None:
    LlmModel.objects.create(
        name="exl2-self-hosted",
        provider="openai_compatible",
        provider_model="turboderp/Llama-3.1-8B-exl2",
        context_window=8192,
        enabled_by_default=True,
    )


def _post(client: Client, body: dict[str, Any]) -> Any:
    return client.post(f"{API}/credentials", json.dumps(body), content_type="application/json")


def test_a_tabbyapi_server_set_through_the_api_gets_its_tools_emulated(
    world: World, openai_fake: FakeOpenAI
) -> None:
    _self_hosted_model()
    owner = client_for(world.alice, world.alpha)
    response = _post(
        owner,
        {
            "provider": "openai_compatible",
            "base_url": openai_fake.base_url,
            "options": {"server": "tabbyapi"},
        },
    )
    assert response.status_code == 200, response.content
    listed = {row["provider"]: row for row in response.json()}
    assert listed["openai_compatible"]["options"] == {"server": "tabbyapi"}

    openai_fake.script(Reply(text=BLOCK))
    request = ChatRequest(
        model="exl2-self-hosted",
        messages=(Message(role="user", content="Weather in Paris?"),),
        tools=(WEATHER,),
    )
    answer = chat(request, CallContext(organization_id=world.alpha.pk))
    sent = openai_fake.chat_requests[-1].json
    # TabbyAPI has no tool calling: the tools went into the prompt, and the answer was parsed back.
    assert "tools" not in sent
    assert "get_weather" in str(sent["messages"])
    assert answer.finish_reason == "tool_calls"
    assert answer.message.tool_calls[0].name == "get_weather"
    assert answer.message.tool_calls[0].parsed_arguments() == {"city": "Paris"}


def test_the_same_server_with_native_tools_gets_them_sent(world: World, openai_fake: FakeOpenAI) -> None:
    _self_hosted_model()
    services.credential_set(
        organization=world.alpha,
        provider="openai_compatible",
        api_key="",
        base_url=openai_fake.base_url,
        options={"server": "tabbyapi", "tools": "native"},
        actor=Actor(user=world.alice),
    )
    openai_fake.script(Reply(text="It is sunny."))
    chat(
        ChatRequest(
            model="exl2-self-hosted",
            messages=(Message(role="user", content="Weather in Paris?"),),
            tools=(WEATHER,),
        ),
        CallContext(organization_id=world.alpha.pk),
    )
    assert openai_fake.chat_requests[-1].json["tools"][0]["function"]["name"] == "get_weather"


def test_a_tgi_server_gets_json_in_tgis_own_shape(world: World, openai_fake: FakeOpenAI) -> None:
    _self_hosted_model()
    services.credential_set(
        organization=world.alpha,
        provider="openai_compatible",
        api_key="",
        base_url=openai_fake.base_url,
        options={"server": "tgi"},
        actor=Actor(user=world.alice),
    )
    openai_fake.script(Reply(text='{"city": "Paris"}'))
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    chat(
        ChatRequest(
            model="exl2-self-hosted",
            messages=(Message(role="user", content="Which city?"),),
            response_format="json",
            json_schema=schema,
        ),
        CallContext(organization_id=world.alpha.pk),
    )
    assert openai_fake.chat_requests[-1].json["response_format"] == {"type": "json", "value": schema}


def test_bad_options_are_400_on_the_options_field_and_nothing_is_stored(world: World) -> None:
    owner = client_for(world.alice, world.alpha)
    base = {"provider": "openai_compatible", "base_url": "https://llm.alpha.test/v1"}
    cases = [
        ({"server": "skynet"}, "unknown OpenAI-compatible server 'skynet'"),
        ({"tools": "telepathy"}, "tools must be one of native, emulated"),
        ({"json": "xml"}, "json must be one of"),
        ({"stream_usage": "sometimes"}, "stream_usage must be true or false"),
        ({"colour": "red"}, "Unknown option 'colour'"),
    ]
    for options, message in cases:
        response = _post(owner, {**base, "options": options})
        assert response.status_code == 400, options
        error = response.json()["error"]
        assert "options" in error["fields"], error
        assert message.lower() in error["message"].lower(), error
    openai_options = _post(owner, {"provider": "openai", "api_key": "sk-x", "options": {"server": "vllm"}})
    assert openai_options.status_code == 400
    assert "has none" in openai_options.json()["error"]["message"]
    assert not ProviderCredential.objects.filter(organization=world.alpha).exists()


def test_the_page_sets_the_options_and_shows_them(world: World) -> None:
    owner = client_for(world.alice, world.alpha)
    response = owner.post(
        "/llm/credentials/set/",
        {
            "provider": "openai_compatible",
            "api_key": "",
            "base_url": "https://llm.alpha.test/v1",
            "server": "vllm",
            "stream_usage": "0",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    stored = ProviderCredential.objects.get(organization=world.alpha, provider="openai_compatible")
    assert stored.options == {"server": "vllm", "stream_usage": False}
    page = owner.get("/llm/credentials/").content.decode()
    assert "server: vllm, stream_usage: no" in page
    audit = AuditEvent.objects.filter(action="llm.credential_set").latest("id")
    assert audit.changes["after"]["options"] == {"server": "vllm", "stream_usage": False}
    refused = owner.post(
        "/llm/credentials/set/",
        {"provider": "openai_compatible", "base_url": "https://llm.alpha.test/v1", "tools": "emulated-ish"},
    )
    assert refused.status_code == 400
    assert "emulated-ish" in refused.content.decode()
