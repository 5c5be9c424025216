"""Retries, fallback, timeouts and circuit breakers, through the real openai SDK against
the loopback fake."""

import asyncio
import time

import pytest
from asgiref.sync import async_to_sync

from apps.llm import services
from apps.llm.errors import ContextTooLong, ProviderFailed
from apps.llm.gateway import gateway
from apps.llm.types import CallContext
from apps.tenancy.audit import Actor
from tests.conftest import World
from tests.fakes.llm_fake import Reply
from tests.llm.gateway_helpers import ask, chat, sent_messages, stream

pytestmark = pytest.mark.django_db


def no_fallbacks(world: World, model: str = "gpt-4o-mini") -> None:
    services.routing_policy_set(
        organization=world.alpha, fallbacks={model: []}, actor=Actor(user=world.alice)
    )


def test_a_429_with_retry_after_is_waited_out_and_the_same_model_answers(world, openai_platform):
    openai_platform.script(
        Reply.error(429, "Rate limit reached", retry_after=1), Reply(text="after the wait")
    )
    started = time.monotonic()
    response = chat(ask("gpt-4o-mini"), CallContext(organization_id=world.alpha.pk))
    assert time.monotonic() - started >= 1.0
    assert response.message.content == "after the wait"
    assert response.route["model"] == "gpt-4o-mini"
    assert [a["outcome"] for a in response.route["attempts"]] == ["provider_rate_limited", "ok"]


def test_a_retry_after_longer_than_the_cap_moves_on_to_the_fallback_at_once(world, openai_platform, settings):
    settings.LLM_RETRY_AFTER_CAP_SECONDS = 2
    openai_platform.script(
        Reply.error(429, "come back in an hour", retry_after=3600), Reply(text="from the fallback")
    )
    started = time.monotonic()
    response = chat(ask("gpt-4o-mini"), CallContext(organization_id=world.alpha.pk))
    assert time.monotonic() - started < 2
    assert response.route["model"] == "gpt-4.1-mini"
    assert response.route["reason"] == "fallback for gpt-4o-mini"
    assert [r.json["model"] for r in openai_platform.chat_requests] == ["gpt-4o-mini", "gpt-4.1-mini"]


def test_a_500_is_retried_and_then_the_next_model_in_the_chain_serves(world, openai_platform, settings):
    settings.LLM_RETRY_ATTEMPTS = 1
    openai_platform.script(
        Reply.error(500, "internal error"), Reply.error(500, "internal error"), Reply(text="fallback answer")
    )
    response = chat(ask("gpt-4o-mini"), CallContext(organization_id=world.alpha.pk))
    assert response.message.content == "fallback answer"
    assert response.route["model"] == "gpt-4.1-mini"
    assert [(a["model"], a["outcome"]) for a in response.route["attempts"]] == [
        ("gpt-4o-mini", "provider_unavailable"),
        ("gpt-4o-mini", "provider_unavailable"),
        ("gpt-4.1-mini", "ok"),
    ]
    # The catalog's other fallbacks need keys this organization does not have: said, not tried.
    assert {"model": "claude-3-5-haiku", "why": "no credentials"} in response.route["skipped"]


def test_the_organizations_fallback_chain_replaces_the_catalogs(world, openai_platform, settings):
    settings.LLM_RETRY_ATTEMPTS = 0
    services.routing_policy_set(
        organization=world.alpha, fallbacks={"gpt-4o-mini": ["gpt-4.1-nano"]}, actor=Actor(user=world.alice)
    )
    openai_platform.script(Reply.error(503, "overloaded"), Reply(text="nano"))
    response = chat(ask("gpt-4o-mini"), CallContext(organization_id=world.alpha.pk))
    assert response.route["model"] == "gpt-4.1-nano"


def test_a_slow_provider_times_out_and_the_retry_answers(world, openai_platform, settings):
    settings.LLM_TIMEOUT_SECONDS = 1.5
    openai_platform.script(Reply.slow(5, text="too late"), Reply(text="in time"))
    response = chat(ask("gpt-4o-mini"), CallContext(organization_id=world.alpha.pk))
    assert response.message.content == "in time"
    assert [a["outcome"] for a in response.route["attempts"]] == ["provider_timeout", "ok"]


def test_a_malformed_body_is_retried(world, openai_platform):
    openai_platform.script(Reply.malformed(), Reply(text="well formed"))
    response = chat(ask("gpt-4o-mini"), CallContext(organization_id=world.alpha.pk))
    assert response.message.content == "well formed"
    assert response.route["attempts"][0]["outcome"] == "provider_malformed_response"


def test_when_every_model_fails_the_caller_gets_a_502_with_the_providers_code(
    world, openai_platform, settings
):
    settings.LLM_RETRY_ATTEMPTS = 0
    openai_platform.default = Reply.error(500, "everything is on fire")
    with pytest.raises(ProviderFailed) as caught:
        chat(ask("gpt-4o-mini"), CallContext(organization_id=world.alpha.pk))
    assert caught.value.status == 502
    assert caught.value.code == "provider_unavailable"
    assert "gpt-4o-mini: provider_unavailable, gpt-4.1-mini: provider_unavailable" in caught.value.message


def test_a_request_the_provider_rejects_is_a_400_and_not_retried(world, openai_platform):
    openai_platform.script(Reply.error(400, "temperature is not supported with this model"))
    with pytest.raises(ProviderFailed) as caught:
        chat(ask("gpt-4o-mini"), CallContext(organization_id=world.alpha.pk))
    assert caught.value.status == 400
    assert "temperature" in caught.value.message
    assert len(openai_platform.chat_requests) == 1


def test_the_circuit_opens_after_repeated_failures_and_closes_after_a_good_trial(
    world, openai_platform, settings
):
    settings.LLM_RETRY_ATTEMPTS = 0
    settings.LLM_BREAKER_FAILURES = 2
    settings.LLM_BREAKER_COOLDOWN_SECONDS = 0.5
    no_fallbacks(world)
    context = CallContext(organization_id=world.alpha.pk)
    openai_platform.script(Reply.error(500, "down"), Reply.error(500, "down"))
    for _ in range(2):
        with pytest.raises(ProviderFailed):
            chat(ask("gpt-4o-mini"), context)
    assert len(openai_platform.chat_requests) == 2

    # Open: refused at once, nothing sent.
    with pytest.raises(ProviderFailed) as caught:
        chat(ask("gpt-4o-mini", "still there?"), context)
    assert caught.value.code == "circuit_open"
    assert caught.value.status == 503
    assert len(openai_platform.chat_requests) == 2

    # After the cool-down one trial goes through; it succeeds and the circuit closes.
    time.sleep(0.6)
    response = chat(ask("gpt-4o-mini", "back?"), context)
    assert response.message.content == "Echo: back?"
    status = gateway().status()
    assert status["circuits"] == {f"openai:{openai_platform.base_url}": "closed"}
    assert status["models"]["gpt-4o-mini"]["latency_ms"] is not None
    chat(ask("gpt-4o-mini", "and again"), context)
    assert len(openai_platform.chat_requests) == 4


def test_a_failed_half_open_trial_opens_the_circuit_again(world, openai_platform, settings):
    settings.LLM_RETRY_ATTEMPTS = 0
    settings.LLM_BREAKER_FAILURES = 1
    settings.LLM_BREAKER_COOLDOWN_SECONDS = 0.3
    no_fallbacks(world)
    context = CallContext(organization_id=world.alpha.pk)
    openai_platform.default = Reply.error(502, "bad gateway")
    with pytest.raises(ProviderFailed):
        chat(ask("gpt-4o-mini"), context)
    time.sleep(0.4)
    with pytest.raises(ProviderFailed) as trial:
        chat(ask("gpt-4o-mini", "trial"), context)
    assert trial.value.code == "provider_unavailable"
    with pytest.raises(ProviderFailed) as refused:
        chat(ask("gpt-4o-mini", "refused"), context)
    assert refused.value.code == "circuit_open"
    assert sent_messages(openai_platform) == ["Hello", "trial"]


def test_an_open_circuit_sends_calls_to_a_fallback_on_another_provider(world, openai_platform, settings):
    from tests.fakes.anthropic_server import anthropic_server

    settings.LLM_RETRY_ATTEMPTS = 0
    settings.LLM_BREAKER_FAILURES = 1
    services.routing_policy_set(
        organization=world.alpha,
        fallbacks={"gpt-4o-mini": ["claude-3-5-haiku"]},
        actor=Actor(user=world.alice),
    )
    with anthropic_server() as anthropic:
        settings.ANTHROPIC_API_KEY = "sk-ant-test"
        settings.ANTHROPIC_BASE_URL = anthropic.base_url
        openai_platform.default = Reply.error(500, "down")
        context = CallContext(organization_id=world.alpha.pk)
        first = chat(ask("gpt-4o-mini", "one"), context)  # OpenAI fails, its circuit opens, Claude answers
        assert first.route["model"] == "claude-3-5-haiku"
        second = chat(ask("gpt-4o-mini", "two"), context)
        assert second.route["model"] == "claude-3-5-haiku"
        assert second.route["attempts"][0]["outcome"] == "circuit_open"
        assert len(openai_platform.chat_requests) == 1  # the open circuit kept the second call away
        assert [r.json["model"] for r in anthropic.requests_to("/messages")] == [
            "claude-3-5-haiku-latest"
        ] * 2


def test_a_prompt_over_the_window_goes_to_a_longer_context_fallback(world, openai_platform):
    long_text = "word " * 140_000  # about 140,000 tokens: over gpt-4o-mini's 128,000
    response = chat(ask("gpt-4o-mini", long_text), CallContext(organization_id=world.alpha.pk))
    assert response.route["model"] == "gpt-4.1-mini"
    assert response.route["reason"].startswith("context fallback from gpt-4o-mini")
    assert [r.json["model"] for r in openai_platform.chat_requests] == ["gpt-4.1-mini"]


def test_a_prompt_over_the_window_with_no_longer_fallback_is_a_400_naming_the_window(world, openai_platform):
    no_fallbacks(world)
    with pytest.raises(ContextTooLong) as caught:
        chat(ask("gpt-4o-mini", "word " * 140_000), CallContext(organization_id=world.alpha.pk))
    assert caught.value.status == 400
    assert "128,000-token context window" in caught.value.message
    assert openai_platform.chat_requests == []


def test_the_providers_context_error_sends_the_call_to_the_next_model(world, openai_platform):
    openai_platform.script(
        Reply.error(400, "maximum context length is 128000 tokens", code="context_length_exceeded"),
        Reply(text="longer window"),
    )
    response = chat(ask("gpt-4o-mini"), CallContext(organization_id=world.alpha.pk))
    assert response.route["model"] == "gpt-4.1-mini"
    assert response.route["attempts"][0]["outcome"] == "context_window_exceeded"


def test_a_stream_fails_over_before_its_first_chunk(world, openai_platform, settings):
    settings.LLM_RETRY_ATTEMPTS = 0
    openai_platform.script(Reply.error(500, "down"), Reply(text="streamed by the fallback"))
    chunks, error = stream(ask("gpt-4o-mini"), CallContext(organization_id=world.alpha.pk))
    assert error is None
    assert "".join(c.text for c in chunks) == "streamed by the fallback"
    assert {c.model for c in chunks} == {"gpt-4.1-mini"}
    assert chunks[-1].finish_reason == "stop"


def test_a_stream_that_breaks_after_its_first_chunk_ends_with_an_error_not_a_fallback(world, openai_platform):
    openai_platform.script(Reply(text="The beginning of a long answer", cut_after_events=3))
    chunks, error = stream(ask("gpt-4o-mini"), CallContext(organization_id=world.alpha.pk))
    assert chunks
    assert chunks[0].text
    assert isinstance(error, ProviderFailed)
    assert "broke after it started" in error.message
    assert len(openai_platform.chat_requests) == 1  # no second model started mid-answer


def test_a_half_open_trial_whose_caller_gives_up_lets_the_next_call_try(world, openai_platform, settings):
    settings.LLM_RETRY_ATTEMPTS = 0
    settings.LLM_BREAKER_FAILURES = 1
    settings.LLM_BREAKER_COOLDOWN_SECONDS = 0.3
    no_fallbacks(world)
    context = CallContext(organization_id=world.alpha.pk, cache=False)
    openai_platform.script(Reply.error(500, "down"), Reply.slow(5, text="too slow"), Reply(text="back"))
    with pytest.raises(ProviderFailed):
        chat(ask("gpt-4o-mini"), context)
    time.sleep(0.4)

    async def give_up() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(gateway().chat(ask("gpt-4o-mini"), context=context), timeout=1)

    async_to_sync(give_up)()
    assert chat(ask("gpt-4o-mini"), context).message.content == "back"
