"""A call's own fallbacks (replacing the organization's chain) and its own timeout
(replacing LLM_TIMEOUT_SECONDS), through the gateway and the real openai SDK against the
loopback fake."""

from __future__ import annotations

import time
from typing import Any

import pytest

from apps.core.errors import Invalid, ServiceError
from apps.llm import services
from apps.llm.errors import GatewayError, ProviderFailed, UnknownModel
from apps.llm.types import CallContext
from apps.tenancy.audit import Actor
from tests.conftest import World
from tests.fakes.llm_fake import Reply
from tests.fakes.openai_server import FakeOpenAI
from tests.llm.gateway_helpers import ask, chat, stream

pytestmark = pytest.mark.django_db


def models_sent(fake: FakeOpenAI) -> list[str]:
    return [request.json["model"] for request in fake.chat_requests]


@pytest.fixture
def no_retries(settings: Any) -> None:
    settings.LLM_RETRY_ATTEMPTS = 0


# --- fallbacks ----------------------------------------------------------------------------------


def test_the_requests_second_fallback_serves_when_the_model_and_the_first_fail(
    world: World, openai_platform: FakeOpenAI, no_retries: None
) -> None:
    openai_platform.script(Reply.error(500, "down"), Reply.error(503, "overloaded"), Reply(text="from nano"))
    context = CallContext(organization_id=world.alpha.pk, fallbacks=("gpt-4o", "gpt-4.1-nano"))
    response = chat(ask("gpt-4o-mini"), context)
    assert response.message.content == "from nano"
    assert response.route["model"] == "gpt-4.1-nano"
    assert response.route["reason"] == "fallback for gpt-4o-mini, from the request's list"
    assert [(a["model"], a["outcome"]) for a in response.route["attempts"]] == [
        ("gpt-4o-mini", "provider_unavailable"),
        ("gpt-4o", "provider_unavailable"),
        ("gpt-4.1-nano", "ok"),
    ]
    # The catalog's chain for gpt-4o-mini (gpt-4.1-mini first) was not used.
    assert models_sent(openai_platform) == ["gpt-4o-mini", "gpt-4o", "gpt-4.1-nano"]


def test_the_requests_list_replaces_the_organizations_chain(
    world: World, openai_platform: FakeOpenAI, no_retries: None
) -> None:
    services.routing_policy_set(
        organization=world.alpha, fallbacks={"gpt-4o-mini": ["gpt-4.1-mini"]}, actor=Actor(user=world.alice)
    )
    openai_platform.script(Reply.error(500, "down"), Reply(text="ok"))
    response = chat(ask("gpt-4o-mini"), CallContext(organization_id=world.alpha.pk, fallbacks=("o3-mini",)))
    assert response.route["model"] == "o3-mini"
    assert models_sent(openai_platform) == ["gpt-4o-mini", "o3-mini"]
    # Without a list of its own, the next call follows the organization's chain again.
    openai_platform.script(Reply.error(500, "down"), Reply(text="ok"))
    again = chat(ask("gpt-4o-mini", "again"), CallContext(organization_id=world.alpha.pk))
    assert again.route["model"] == "gpt-4.1-mini"


def test_an_empty_list_means_no_fallback_at_all(
    world: World, openai_platform: FakeOpenAI, no_retries: None
) -> None:
    openai_platform.default = Reply.error(500, "down")
    with pytest.raises(ProviderFailed) as caught:
        chat(ask("gpt-4o-mini"), CallContext(organization_id=world.alpha.pk, fallbacks=()))
    assert caught.value.status == 502
    assert models_sent(openai_platform) == ["gpt-4o-mini"]


def test_the_requests_order_is_kept_even_for_a_model_that_often_fails(
    world: World, openai_platform: FakeOpenAI, no_retries: None
) -> None:
    openai_platform.script(Reply.error(500, "down"))
    with pytest.raises(ProviderFailed):
        chat(ask("gpt-4.1-nano", "warm up"), CallContext(organization_id=world.alpha.pk, fallbacks=()))
    # gpt-4.1-nano's one call failed: the organization's chain would move it last; this list keeps it first.
    openai_platform.script(Reply.error(500, "down"), Reply(text="nano again"))
    response = chat(
        ask("gpt-4o-mini"),
        CallContext(organization_id=world.alpha.pk, fallbacks=("gpt-4.1-nano", "gpt-4.1-mini")),
    )
    assert response.route["model"] == "gpt-4.1-nano"


def test_auto_then_the_requests_list(world: World, openai_platform: FakeOpenAI, no_retries: None) -> None:
    openai_platform.script(Reply.error(500, "down"), Reply(text="from o3-mini"))
    response = chat(ask("auto", "Hi"), CallContext(organization_id=world.alpha.pk, fallbacks=("o3-mini",)))
    assert response.route["model"] == "o3-mini"
    assert models_sent(openai_platform) == ["gpt-4.1-nano", "o3-mini"]


def test_a_fallback_too_small_for_the_prompt_is_skipped_and_said_so(
    world: World, openai_platform: FakeOpenAI, no_retries: None
) -> None:
    long_text = "word " * 140_000  # about 140,000 tokens: over gpt-4o's 128,000, within gpt-4.1-mini's
    response = chat(
        ask("gpt-4.1-nano", long_text),
        CallContext(organization_id=world.alpha.pk, fallbacks=("gpt-4o", "gpt-4.1-mini")),
    )
    assert response.route["model"] == "gpt-4.1-nano"
    assert {"model": "gpt-4o", "why": "context window 128,000 too small"} in response.route["skipped"]


@pytest.mark.parametrize(
    ("fallbacks", "error", "code", "words"),
    [
        (("gpt-17",), UnknownModel, "unknown_model", "Unknown fallback model 'gpt-17'"),
        (("text-embedding-3-small",), UnknownModel, "unknown_model", "'text-embedding-3-small'"),
        (("claude-sonnet-4",), GatewayError, "fallback_unusable", "'claude-sonnet-4' cannot be used"),
        (tuple(f"gpt-4o-mini-{n}" for n in range(11)), GatewayError, "llm_error", "At most 10"),
    ],
)
def test_a_fallback_that_cannot_be_used_is_a_400_naming_it_and_nothing_is_sent(
    world: World,
    openai_platform: FakeOpenAI,
    fallbacks: tuple[str, ...],
    error: type[ServiceError],
    code: str,
    words: str,
) -> None:
    with pytest.raises(error) as caught:
        chat(ask("gpt-4o-mini"), CallContext(organization_id=world.alpha.pk, fallbacks=fallbacks))
    assert caught.value.status == 400
    assert caught.value.code == code
    assert caught.value.field == "fallbacks"
    assert words in caught.value.message
    assert openai_platform.requests == []


def test_a_fallback_disabled_for_the_organization_is_a_400(world: World, openai_platform: FakeOpenAI) -> None:
    services.model_access_set(
        organization=world.alpha, model_name="gpt-4.1-mini", enabled=False, actor=Actor(user=world.alice)
    )
    with pytest.raises(GatewayError) as caught:
        chat(ask("gpt-4o-mini"), CallContext(organization_id=world.alpha.pk, fallbacks=("gpt-4.1-mini",)))
    assert caught.value.status == 400
    assert "'gpt-4.1-mini' cannot be used by this organization: disabled" in caught.value.message
    assert openai_platform.requests == []


# --- timeout ------------------------------------------------------------------------------------


def test_the_calls_timeout_cuts_a_slow_model_and_its_fallback_answers(
    world: World, openai_platform: FakeOpenAI, no_retries: None
) -> None:
    openai_platform.script(Reply.slow(5, text="too late"), Reply(text="in time"))
    started = time.monotonic()
    response = chat(
        ask("gpt-4o-mini"),
        CallContext(organization_id=world.alpha.pk, fallbacks=("gpt-4.1-nano",), timeout_seconds=1),
    )
    assert time.monotonic() - started < 4  # LLM_TIMEOUT_SECONDS is 60
    assert response.route["model"] == "gpt-4.1-nano"
    assert [a["outcome"] for a in response.route["attempts"]] == ["provider_timeout", "ok"]


def test_a_timeout_longer_than_the_setting_lets_a_slow_answer_arrive(
    world: World, openai_platform: FakeOpenAI, settings: Any, no_retries: None
) -> None:
    settings.LLM_TIMEOUT_SECONDS = 1  # the SDK clients' own timeout, too
    openai_platform.script(Reply.slow(2, text="worth the wait"))
    response = chat(ask("gpt-4o-mini"), CallContext(organization_id=world.alpha.pk, timeout_seconds=10))
    assert response.message.content == "worth the wait"
    assert response.route["attempts"] == [{"model": "gpt-4o-mini", "outcome": "ok"}]
    # And without it, the setting holds.
    openai_platform.script(Reply.slow(2, text="too slow"), Reply.slow(2, text="too slow"))
    with pytest.raises(ProviderFailed) as caught:
        chat(ask("gpt-4o-mini", "again"), CallContext(organization_id=world.alpha.pk, fallbacks=()))
    assert caught.value.code == "provider_timeout"


def test_the_timeout_is_per_streamed_chunk_not_for_the_whole_stream(
    world: World, openai_platform: FakeOpenAI, no_retries: None
) -> None:
    # Eight events 0.4 s apart; the longest wait for a chunk of ours is the last (finish, usage, done).
    openai_platform.script(Reply(text="one two three four", chunk_size=5, chunk_delay=0.4))
    started = time.monotonic()
    chunks, error = stream(
        ask("gpt-4o-mini"), CallContext(organization_id=world.alpha.pk, fallbacks=(), timeout_seconds=1.5)
    )
    assert error is None
    assert time.monotonic() - started > 1.5  # longer than the timeout in all, each chunk within it
    assert "".join(chunk.text for chunk in chunks) == "one two three four"


def test_a_stream_whose_chunks_stop_coming_ends_with_a_timeout(
    world: World, openai_platform: FakeOpenAI, no_retries: None
) -> None:
    # The role and two text pieces at once, then nothing for 5 s.
    openai_platform.script(Reply(text="one two three", chunk_size=4, stall_after_events=3, stall_seconds=5))
    started = time.monotonic()
    chunks, error = stream(
        ask("gpt-4o-mini"), CallContext(organization_id=world.alpha.pk, fallbacks=(), timeout_seconds=1)
    )
    assert "".join(chunk.text for chunk in chunks) == "one two "
    assert isinstance(error, ProviderFailed)
    assert error.code == "provider_timeout"
    assert "the stream broke after it started" in error.message
    assert time.monotonic() - started < 4


def test_a_callers_short_timeout_does_not_open_the_circuit_for_everyone(
    world: World, openai_platform: FakeOpenAI, settings: Any, no_retries: None
) -> None:
    settings.LLM_BREAKER_FAILURES = 1
    openai_platform.script(Reply.slow(2, text="slow but fine"), Reply(text="served"))
    impatient = CallContext(organization_id=world.alpha.pk, fallbacks=(), timeout_seconds=1)
    with pytest.raises(ProviderFailed) as caught:
        chat(ask("gpt-4o-mini", "quick!"), impatient)
    assert caught.value.code == "provider_timeout"
    # The provider was not failing, only slower than one caller would wait: the next call goes through.
    response = chat(ask("gpt-4o-mini", "no hurry"), CallContext(organization_id=world.alpha.pk))
    assert response.message.content == "served"
    assert response.route["attempts"] == [{"model": "gpt-4o-mini", "outcome": "ok"}]


@pytest.mark.parametrize("seconds", [0.5, 601, -1])
def test_a_timeout_out_of_range_is_a_400(world: World, openai_platform: FakeOpenAI, seconds: float) -> None:
    with pytest.raises(Invalid) as caught:
        chat(ask("gpt-4o-mini"), CallContext(organization_id=world.alpha.pk, timeout_seconds=seconds))
    assert caught.value.field == "timeout"
    assert "between 1 and 600 seconds" in caught.value.message
    assert openai_platform.requests == []


def test_fallbacks_and_timeout_are_not_part_of_the_cache_key(
    world: World, openai_platform: FakeOpenAI
) -> None:
    chat(ask("gpt-4o-mini", "cached?"), CallContext(organization_id=world.alpha.pk))
    again = chat(
        ask("gpt-4o-mini", "cached?"),
        CallContext(organization_id=world.alpha.pk, fallbacks=("gpt-4.1-nano",), timeout_seconds=5),
    )
    assert again.route["cache"] == "l1"
    assert len(openai_platform.chat_requests) == 1
