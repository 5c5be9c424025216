"""The OpenAI-compatible endpoint (/v1/...), driven by the real `openai` SDK against the
live ASGI server, whose gateway talks to the loopback fake OpenAI API with the
organization's own credentials. The data is committed (live_db) and removed after."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import openai
import pytest
from django.db import connection
from django.test import Client

from apps.core.api import _throttle_redis
from apps.llm import selectors
from apps.llm.credentials import api_key_encrypt
from apps.llm.metering import meter
from apps.llm.models import Budget, LlmModel, ModelAccess, ProviderCredential, UsageDaily, UsageHourly
from apps.tenancy import identity
from apps.tenancy.audit import Actor
from apps.tenancy.models import ApiKey, AuditEvent, Organization
from tests.conftest import LiveServer, World, host
from tests.fakes.llm_fake import Reply
from tests.fakes.openai_server import FakeOpenAI

WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@dataclass
class Keys:
    alpha: str  # llm:write on Alpha
    alpha_read: str  # llm:read on Alpha
    beta: str  # llm:write on Beta


def _key(world: World, organization: Organization, scopes: list[str]) -> str:
    owner = world.alice if organization == world.alpha else world.bob
    _, raw = identity.api_key_create(
        actor=Actor(user=owner), organization=organization, name="openai endpoint test", scopes=scopes
    )
    return raw


@pytest.fixture
def keys(live_db: World) -> Iterator[Keys]:
    selectors.snapshots_clear()
    yield Keys(
        alpha=_key(live_db, live_db.alpha, ["llm:write"]),
        alpha_read=_key(live_db, live_db.alpha, ["llm:read"]),
        beta=_key(live_db, live_db.beta, ["llm:write"]),
    )
    made = ApiKey.objects.filter(name="openai endpoint test")
    ids = list(made.values_list("pk", flat=True))
    UsageDaily.objects.filter(api_key_id__in=ids).delete()
    UsageHourly.objects.filter(api_key_id__in=ids).delete()
    # The audit log is append-only for the application; this test's own rows go by SQL.
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {AuditEvent._meta.db_table} WHERE action = 'api_key.created'"  # noqa: S608 (a model's table)
            " AND target_id = ANY(%s)",
            [[str(pk) for pk in ids]],
        )
    made.delete()
    selectors.snapshots_clear()


@pytest.fixture
def alpha_openai(live_db: World, openai_fake: FakeOpenAI) -> Iterator[FakeOpenAI]:
    """Alpha's own OpenAI credentials point at the fake; Beta has none (and no platform default)."""
    openai_fake.api_key = "sk-alpha-own"
    ProviderCredential.objects.create(
        organization=live_db.alpha,
        provider="openai",
        api_key_encrypted=api_key_encrypt("sk-alpha-own"),
        api_key_hint="-own",
        base_url=openai_fake.base_url,
    )
    selectors.snapshots_clear()
    yield openai_fake
    ProviderCredential.objects.filter(organization=live_db.alpha).delete()
    ModelAccess.objects.filter(organization__in=[live_db.alpha, live_db.beta]).delete()
    selectors.snapshots_clear()


def sdk(server: LiveServer, key: str, organization: Organization | None = None) -> openai.OpenAI:
    """The official client, on the public host (the key selects the organization) or on an
    organization's own host (127.0.0.1 with its Host header: *.localhost need not resolve)."""
    headers = {"Host": f"{host(organization)}:{server.port}"} if organization else None
    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{server.port}/v1", api_key=key, max_retries=0, default_headers=headers
    )


def raw_request(
    server: LiveServer, method: str, path: str, key: str | None = None, body: str | None = None
) -> tuple[int, dict[str, str], str]:
    """A plain HTTP exchange (status, lower-cased headers, body), to see exactly what is sent."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read().decode()
    finally:
        connection.close()


def test_chat_completion_with_the_official_sdk(
    asgi_server: LiveServer, keys: Keys, alpha_openai: FakeOpenAI
) -> None:
    alpha_openai.script(Reply(text="Paris is the capital of France.", usage=(21, 7, 5)))
    raw = sdk(asgi_server, keys.alpha).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Capital of France?"},
        ],
        temperature=0.2,
        max_tokens=50,
    )
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "Paris is the capital of France."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (21, 7)
    assert completion.usage.total_tokens == 28
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 5
    # Which model served and why, for clients that care.
    assert raw.headers["x-agentyard-model"] == "gpt-4o-mini"
    assert raw.headers["x-agentyard-provider"] == "openai"
    assert raw.headers["x-agentyard-reason"]
    assert isinstance(json.loads(raw.headers["x-agentyard-attempts"]), list)
    # The provider saw Alpha's own key and the conversation as sent.
    sent = alpha_openai.chat_requests[-1]
    assert sent.headers["authorization"] == "Bearer sk-alpha-own"
    assert sent.json["model"] == "gpt-4o-mini"
    assert [m["role"] for m in sent.json["messages"]] == ["system", "user"]
    assert sent.json["temperature"] == 0.2


def test_the_key_works_on_its_own_organization_host_too(
    asgi_server: LiveServer, keys: Keys, alpha_openai: FakeOpenAI, live_db: World
) -> None:
    alpha_openai.script(Reply(text="hello from alpha's host"))
    completion = sdk(asgi_server, keys.alpha, live_db.alpha).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content == "hello from alpha's host"


def test_streaming_sends_openai_chunks_then_done(
    asgi_server: LiveServer, keys: Keys, alpha_openai: FakeOpenAI
) -> None:
    text = "One, two, three, four, five."
    alpha_openai.script(Reply(text=text, usage=(12, 9, 0)))
    stream = sdk(asgi_server, keys.alpha).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Count to five."}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # really streamed
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (12, 9)


def test_the_stream_is_server_sent_events_as_openai_frames_them(
    asgi_server: LiveServer, keys: Keys, alpha_openai: FakeOpenAI
) -> None:
    alpha_openai.script(Reply(text="abcdefgh"))
    status, headers, body = raw_request(
        asgi_server,
        "POST",
        "/v1/chat/completions",
        keys.alpha,
        json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "stream": True}),
    )
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["x-accel-buffering"] == "no"
    events = body.split("\n\n")
    assert events[-1] == ""
    assert events[-2] == "data: [DONE]"
    payloads = [json.loads(event.removeprefix("data: ")) for event in events[:-2]]
    assert all("usage" not in payload for payload in payloads)  # only with include_usage
    assert payloads[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}


def test_tool_calls_round_trip(asgi_server: LiveServer, keys: Keys, alpha_openai: FakeOpenAI) -> None:
    client = sdk(asgi_server, keys.alpha)
    alpha_openai.script(Reply.tool("get_weather", {"city": "Paris"}), Reply(text="It is sunny in Paris."))
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=messages,
        tools=[WEATHER_TOOL],
        tool_choice="required",
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    sent = alpha_openai.chat_requests[-1].json
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["tool_choice"] == "required"
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny"}'},
    ]
    second = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=messages,
        tools=[WEATHER_TOOL],
    )
    assert second.choices[0].message.content == "It is sunny in Paris."
    followed = alpha_openai.chat_requests[-1].json["messages"]
    assert followed[1]["tool_calls"][0]["id"] == call.id
    assert followed[2] == {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny"}'}


def test_streamed_tool_calls_arrive_as_openai_deltas(
    asgi_server: LiveServer, keys: Keys, alpha_openai: FakeOpenAI
) -> None:
    alpha_openai.script(Reply.tool("get_weather", {"city": "Lyon"}))
    stream = sdk(asgi_server, keys.alpha).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Weather in Lyon?"}],
        tools=[WEATHER_TOOL],
        stream=True,
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        for delta in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(delta.index, {"name": "", "arguments": ""})
            assert delta.function is not None
            entry["name"] += delta.function.name or ""
            entry["arguments"] += delta.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == {"city": "Lyon"}


def test_json_output_is_asked_of_the_provider(
    asgi_server: LiveServer, keys: Keys, alpha_openai: FakeOpenAI
) -> None:
    alpha_openai.script(Reply(text='{"answer": 42}'))
    completion = sdk(asgi_server, keys.alpha).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Answer in JSON."}],
        response_format={"type": "json_object"},
    )
    assert json.loads(completion.choices[0].message.content or "") == {"answer": 42}
    assert alpha_openai.chat_requests[-1].json["response_format"]["type"] in {"json_object", "json_schema"}


def test_models_lists_what_the_organization_may_call(
    asgi_server: LiveServer, keys: Keys, alpha_openai: FakeOpenAI, live_db: World
) -> None:
    gpt4o = LlmModel.objects.get(name="gpt-4o")
    ModelAccess.objects.create(organization=live_db.alpha, model=gpt4o, enabled=False)
    selectors.snapshots_clear()
    alpha_ids = {model.id for model in sdk(asgi_server, keys.alpha_read).models.list()}
    assert {"smollm2-135m", "gpt-4o-mini"} <= alpha_ids
    assert "gpt-4o" not in alpha_ids  # switched off for Alpha only
    assert "gpt-4o" in {model.id for model in sdk(asgi_server, keys.beta).models.list()}
    model = sdk(asgi_server, keys.alpha_read).models.retrieve("gpt-4o-mini")
    assert (model.id, model.owned_by) == ("gpt-4o-mini", "openai")
    with pytest.raises(openai.NotFoundError) as missing:
        sdk(asgi_server, keys.alpha_read).models.retrieve("gpt-4o")
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.PermissionDeniedError) as disabled:
        sdk(asgi_server, keys.alpha).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
    assert disabled.value.code == "model_disabled"
    assert alpha_openai.chat_requests == []


def test_embeddings_in_both_encodings(asgi_server: LiveServer, keys: Keys, alpha_openai: FakeOpenAI) -> None:
    client = sdk(asgi_server, keys.alpha)
    vectors = [[0.25, -0.5, 0.125], [1.0, 0.0, -1.0]]
    alpha_openai.script(Reply(vectors=vectors), Reply(vectors=vectors), endpoint="embeddings")
    # The SDK asks for base64 unless told otherwise, and decodes it.
    default = client.embeddings.create(model="text-embedding-3-small", input=["first", "second"])
    floats = client.embeddings.create(
        model="text-embedding-3-small", input=["first", "second"], encoding_format="float"
    )
    assert [item.embedding for item in default.data] == vectors
    assert [item.embedding for item in floats.data] == vectors
    assert [item.index for item in default.data] == [0, 1]
    assert default.model == "text-embedding-3-small"
    assert alpha_openai.requests_to("/embeddings")[-1].json["input"] == ["first", "second"]


def test_an_api_we_do_not_serve_is_openais_404(asgi_server: LiveServer, keys: Keys) -> None:
    status, headers, body = raw_request(asgi_server, "POST", "/v1/responses", keys.alpha, "{}")
    assert status == 404
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "unknown_endpoint"


def test_a_bad_key_is_401_in_openais_error_shape(asgi_server: LiveServer, keys: Keys) -> None:
    for bad in ("sk-not-ours", "ayk_abc123abc123_wrong"):
        with pytest.raises(openai.AuthenticationError) as refused:
            sdk(asgi_server, bad).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
        assert refused.value.status_code == 401
        assert refused.value.code == "invalid_api_key"
        assert refused.value.type == "authentication_error"
    status, _, body = raw_request(asgi_server, "GET", "/v1/models")
    assert status == 401
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "missing_api_key"
    assert "Authorization: Bearer" in error["message"]


def test_a_key_without_the_llm_scope_is_refused(asgi_server: LiveServer, keys: Keys, live_db: World) -> None:
    with pytest.raises(openai.PermissionDeniedError) as refused:
        sdk(asgi_server, keys.alpha_read).chat.completions.create(
            model="smollm2-135m", messages=[{"role": "user", "content": "hi"}]
        )
    assert refused.value.code == "missing_scope"
    assert "llm:write" in refused.value.message
    other = _key(live_db, live_db.alpha, ["workspaces:read"])
    with pytest.raises(openai.PermissionDeniedError):
        sdk(asgi_server, other).models.list()


def test_unknown_model_is_400_naming_it(
    asgi_server: LiveServer, keys: Keys, alpha_openai: FakeOpenAI
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        sdk(asgi_server, keys.alpha).chat.completions.create(
            model="gpt-17-ultra", messages=[{"role": "user", "content": "hi"}]
        )
    assert refused.value.code == "unknown_model"
    assert refused.value.param == "model"
    assert refused.value.type == "invalid_request_error"
    assert "gpt-17-ultra" in refused.value.message
    with pytest.raises(openai.BadRequestError) as streamed:
        sdk(asgi_server, keys.alpha).chat.completions.create(
            model="gpt-17-ultra", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    assert streamed.value.code == "unknown_model"  # refused before the stream starts: a plain 400
    assert alpha_openai.requests == []


def test_another_organizations_key_cannot_use_this_ones_credentials(
    asgi_server: LiveServer, keys: Keys, alpha_openai: FakeOpenAI, live_db: World
) -> None:
    # Beta has no OpenAI key of its own and the platform has none: Alpha's is not lent.
    with pytest.raises(openai.PermissionDeniedError) as refused:
        sdk(asgi_server, keys.beta).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    assert refused.value.code == "missing_credentials"
    # Nor does Beta's key open Alpha's host.
    with pytest.raises(openai.PermissionDeniedError) as wrong_host:
        sdk(asgi_server, keys.beta, live_db.alpha).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    assert wrong_host.value.code == "wrong_organization"
    assert alpha_openai.requests == []


def test_bad_requests_are_400_naming_the_parameter_and_send_nothing(
    asgi_server: LiveServer, keys: Keys, alpha_openai: FakeOpenAI
) -> None:
    url = "/v1/chat/completions"
    cases: list[tuple[object, str | None, str]] = [
        ("{not json", None, "invalid_json"),
        ({"model": "gpt-4o-mini"}, "messages", "invalid_value"),
        ({"messages": [{"role": "user", "content": "x"}]}, "model", "missing_required_parameter"),
        ({"model": "gpt-4o-mini", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", ""),
        (
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "temperature": 9},
            "temperature",
            "",
        ),
        ({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "n": 3}, "n", ""),
        (
            {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function"}],
            },
            "tools[0]",
            "",
        ),
        (
            {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}],
            },
            "messages[0].content[0]",
            "unsupported_content",
        ),
    ]
    for body, param, code in cases:
        content = body if isinstance(body, str) else json.dumps(body)
        status, _, answer = raw_request(asgi_server, "POST", url, keys.alpha, content)
        assert status == 400, body
        error = json.loads(answer)["error"]
        assert error["type"] == "invalid_request_error"
        assert error["param"] == param, body
        if code:
            assert error["code"] == code, body
    assert raw_request(asgi_server, "GET", url, keys.alpha)[0] == 405
    assert alpha_openai.requests == []


def test_a_provider_failure_is_a_502_with_its_stable_code(
    asgi_server: LiveServer, keys: Keys, alpha_openai: FakeOpenAI
) -> None:
    alpha_openai.api_key = "sk-someone-else"  # the provider refuses Alpha's key, every time
    with pytest.raises(openai.APIStatusError) as failed:
        sdk(asgi_server, keys.alpha).chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"Cache-Control": "no-store"},
        )
    assert failed.value.status_code == 502
    assert failed.value.code == "provider_authentication_failed"


def test_the_organization_host_refuses_sessions_and_other_keys(live_db: World, keys: Keys) -> None:
    world = live_db
    """Cookies never call models (no CSRF hole): only keys, and only this organization's."""
    member = Client(HTTP_HOST=host(world.alpha))
    member.force_login(world.alice)
    assert member.post("/v1/chat/completions", "{}", content_type="application/json").status_code == 401
    beta_key = Client(HTTP_HOST=host(world.alpha), HTTP_AUTHORIZATION=f"Bearer {keys.beta}")
    response = beta_key.get("/v1/models")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "wrong_organization"


def test_a_key_over_its_budget_gets_402_and_nothing_is_sent(
    asgi_server: LiveServer, keys: Keys, alpha_openai: FakeOpenAI, live_db: World
) -> None:
    key = ApiKey.objects.get(prefix=keys.alpha.split("_")[1])
    Budget.objects.create(
        organization=live_db.alpha,
        scope=Budget.Scope.API_KEY,
        api_key_id=key.pk,
        period=Budget.Period.DAY,
        limit_usd=Decimal("0"),
    )
    selectors.snapshots_clear()
    try:
        with pytest.raises(openai.APIStatusError) as refused:
            sdk(asgi_server, keys.alpha).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
        assert refused.value.status_code == 402
        assert refused.value.code == "budget_exceeded"
        assert "API key" in refused.value.message
        assert alpha_openai.requests == []
        # Another key of the same organization is not held to this key's budget.
        alpha_openai.script(Reply(text="fine"))
        other = _key(live_db, live_db.alpha, ["llm:write"])
        completion = sdk(asgi_server, other).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        assert completion.choices[0].message.content == "fine"
    finally:
        Budget.objects.filter(organization=live_db.alpha).delete()


def test_the_local_model_answers_with_no_provider_key_at_all(
    asgi_server: LiveServer, keys: Keys, settings: Any
) -> None:
    """SmolLM2 through llama.cpp for real: what a new organization can call on day one."""
    settings.OPENAI_API_KEY = ""
    client = sdk(asgi_server, keys.alpha)
    completion = client.chat.completions.create(
        model="local",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        temperature=0,
        extra_headers={"Cache-Control": "no-store"},
    )
    assert completion.model == "smollm2-135m"
    assert completion.choices[0].message.content
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 0
    stream = client.chat.completions.create(
        model="local",
        messages=[{"role": "user", "content": "Count: one, two,"}],
        max_tokens=8,
        temperature=0,
        stream=True,
        extra_headers={"Cache-Control": "no-store"},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    assert chunks[-1].choices[0].finish_reason in {"stop", "length"}


def test_past_the_rate_limit_a_key_gets_429_with_retry_after(
    asgi_server: LiveServer, keys: Keys, settings: Any
) -> None:
    settings.API_RATE_LIMIT = "2/min"
    reader = ApiKey.objects.get(prefix=keys.alpha_read.split("_")[1])
    counter = f"throttle:key:{reader.pk}"
    try:
        client = sdk(asgi_server, keys.alpha_read)
        client.models.list()
        client.models.list()
        with pytest.raises(openai.RateLimitError) as limited:
            client.models.list()
        assert limited.value.code == "rate_limit_exceeded"
        assert 0 < int(limited.value.response.headers["retry-after"]) <= 60
        assert sdk(asgi_server, keys.alpha).models.list().data  # another key has its own budget
    finally:
        _throttle_redis().delete(counter)


def test_a_stream_broken_after_the_first_token_ends_with_an_error_event(
    asgi_server: LiveServer, keys: Keys, alpha_openai: FakeOpenAI
) -> None:
    alpha_openai.script(Reply(text="This answer is cut off in the middle.", chunk_size=3, cut_after_events=4))
    stream = sdk(asgi_server, keys.alpha).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Tell me something."}],
        stream=True,
        extra_headers={"Cache-Control": "no-store"},
    )
    received: list[str] = []

    def read_all() -> None:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError) as broken:
        read_all()
    assert "".join(received).startswith("This")  # what came before the break was delivered
    assert str(broken.value.code).startswith("provider_")
    assert len(alpha_openai.chat_requests) == 1  # no failover once the answer has started


def test_calls_through_the_endpoint_show_in_the_organizations_usage(
    asgi_server: LiveServer, keys: Keys, alpha_openai: FakeOpenAI, live_db: World
) -> None:
    alpha_openai.script(Reply(text="metered", usage=(40, 10, 0)))
    sdk(asgi_server, keys.alpha).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "count me"}],
        extra_headers={"Cache-Control": "no-store"},
    )
    meter().flush()
    key = ApiKey.objects.get(prefix=keys.alpha.split("_")[1])
    owner = Client(HTTP_HOST=host(live_db.alpha))
    owner.force_login(live_db.alice)
    usage = owner.get("/api/v1/llm/usage?days=1").json()
    mine = [row for row in usage["rows"] if row["api_key_id"] == key.pk]
    assert [(row["model"], row["requests"], row["input_tokens"], row["output_tokens"]) for row in mine] == [
        ("gpt-4o-mini", 1, 40, 10)
    ]
    assert Decimal(mine[0]["cost_usd"]) > 0
    beta_owner = Client(HTTP_HOST=host(live_db.beta))
    beta_owner.force_login(live_db.bob)
    assert all(
        row["api_key_id"] != key.pk for row in beta_owner.get("/api/v1/llm/usage?days=1").json()["rows"]
    )
