"""Response caches: L1 in process, L2 in Redis, L3 semantic (opt-in), with their counters."""

from typing import Any

import pytest
from prometheus_client import REGISTRY

from apps.llm.gateway import gateway, gateway_reset
from apps.llm.types import CallContext, Tool
from tests.fakes.llm_fake import Reply
from tests.llm.gateway_helpers import ask, chat, stream

pytestmark = pytest.mark.django_db


def lookups(level: str, result: str) -> float:
    return REGISTRY.get_sample_value("llm_cache_lookups_total", {"level": level, "result": result}) or 0.0


def test_the_same_request_again_is_answered_from_l1_without_a_call(world, openai_platform):
    context = CallContext(organization_id=world.alpha.pk)
    hits = lookups("l1", "hit")
    first = chat(ask("gpt-4o-mini", "What is 2 + 2?"), context)
    second = chat(ask("gpt-4o-mini", "  What is   2 + 2?  "), context)  # same text, other spacing
    assert first.route["cache"] is None
    assert second.route["cache"] == "l1"
    assert second.route["cost_usd"] == 0.0
    assert second.message.content == first.message.content
    assert len(openai_platform.chat_requests) == 1
    assert lookups("l1", "hit") == hits + 1


def test_another_process_finds_the_answer_in_l2(world, openai_platform):
    context = CallContext(organization_id=world.alpha.pk)
    chat(ask("gpt-4o-mini", "Name a colour"), context)
    gateway().cache.l1.clear()  # as a fresh process would have it
    hits = lookups("l2", "hit")
    again = chat(ask("gpt-4o-mini", "Name a colour"), context)
    assert again.route["cache"] == "l2"
    assert len(openai_platform.chat_requests) == 1
    assert lookups("l2", "hit") == hits + 1
    # and it is back in L1
    assert chat(ask("gpt-4o-mini", "Name a colour"), context).route["cache"] == "l1"


def test_parameters_model_and_organization_are_part_of_the_key(world, openai_platform):
    alpha = CallContext(organization_id=world.alpha.pk)
    chat(ask("gpt-4o-mini", "Same words"), alpha)
    chat(ask("gpt-4o-mini", "Same words", temperature=0.9), alpha)
    chat(ask("gpt-4.1-mini", "Same words"), alpha)
    chat(ask("gpt-4o-mini", "Same words"), CallContext(organization_id=world.beta.pk))
    assert len(openai_platform.chat_requests) == 4


def test_a_request_can_opt_out_of_the_exact_caches(world, openai_platform):
    context = CallContext(organization_id=world.alpha.pk, cache=False)
    chat(ask("gpt-4o-mini", "fresh please"), context)
    second = chat(ask("gpt-4o-mini", "fresh please"), context)
    assert second.route["cache"] is None
    assert len(openai_platform.chat_requests) == 2
    # Opted-out answers were not stored either.
    third = chat(ask("gpt-4o-mini", "fresh please"), CallContext(organization_id=world.alpha.pk))
    assert third.route["cache"] is None


def test_failed_answers_are_not_cached(world, openai_platform, settings):
    settings.LLM_RETRY_ATTEMPTS = 0
    openai_platform.default = Reply.error(500, "down")
    context = CallContext(organization_id=world.alpha.pk)
    for _ in range(2):
        with pytest.raises(Exception, match="down"):
            chat(ask("gpt-4o-mini", "cache me not"), context)
    openai_platform.default = None
    assert chat(ask("gpt-4o-mini", "cache me not"), context).route["cache"] is None


def test_a_cached_answer_streams_too(world, openai_platform):
    context = CallContext(organization_id=world.alpha.pk)
    chunks, error = stream(ask("gpt-4o-mini", "Stream this"), context)
    assert error is None
    text = "".join(c.text for c in chunks)
    assert text == "Echo: Stream this"
    again, _ = stream(ask("gpt-4o-mini", "Stream this"), context)
    assert "".join(c.text for c in again) == text
    assert len(openai_platform.chat_requests) == 1
    assert chat(ask("gpt-4o-mini", "Stream this"), context).route["cache"] == "l1"


def test_the_l1_cache_is_bounded(world, openai_platform, settings):
    settings.LLM_CACHE_L1_SIZE = 3
    gateway_reset()
    context = CallContext(organization_id=world.alpha.pk)
    for index in range(5):
        chat(ask("gpt-4o-mini", f"question {index}"), context)
    assert len(gateway().cache.l1) == 3


def semantic_gateway(settings: Any) -> None:
    settings.LLM_SEMANTIC_CACHE_MODEL = "text-embedding-3-small"
    settings.LLM_SEMANTIC_CACHE_THRESHOLD = 0.95
    gateway_reset()


def test_the_semantic_cache_answers_a_reworded_question(world, openai_platform, settings):
    semantic_gateway(settings)
    context = CallContext(organization_id=world.alpha.pk, semantic_cache=True)
    first = chat(ask("gpt-4o-mini", "What is the capital of France?"), context)
    # The fake's embeddings are a bag of words: the same words in another order and case match.
    second = chat(ask("gpt-4o-mini", "the capital of France is WHAT"), context)
    assert second.route["cache"] == "l3"
    assert second.message.content == first.message.content
    assert second.route["semantic_cache"] == "similarity 1.000"
    assert len(openai_platform.chat_requests) == 1
    assert len(openai_platform.requests_to("/embeddings")) == 2
    # Something else entirely is a miss.
    third = chat(ask("gpt-4o-mini", "Write a haiku about rain"), context)
    assert third.route["cache"] is None
    assert len(openai_platform.chat_requests) == 2


def test_the_semantic_cache_is_opt_in_and_per_organization(world, openai_platform, settings):
    semantic_gateway(settings)
    chat(
        ask("gpt-4o-mini", "How tall is Everest?"),
        CallContext(organization_id=world.alpha.pk, semantic_cache=True),
    )
    plain = chat(ask("gpt-4o-mini", "how tall is everest"), CallContext(organization_id=world.alpha.pk))
    assert plain.route["cache"] is None  # not asked for
    other = chat(
        ask("gpt-4o-mini", "how tall is everest"),
        CallContext(organization_id=world.beta.pk, semantic_cache=True),
    )
    assert other.route["cache"] is None  # another organization's answers are never served


def test_the_semantic_cache_never_serves_tool_calling_turns(world, openai_platform, settings):
    semantic_gateway(settings)
    tool = Tool(name="lookup", description="Look a word up", parameters={"type": "object", "properties": {}})
    context = CallContext(organization_id=world.alpha.pk, semantic_cache=True, cache=False)
    chat(ask("gpt-4o-mini", "Define serendipity", tools=(tool,)), context)
    again = chat(ask("gpt-4o-mini", "define serendipity", tools=(tool,)), context)
    assert again.route["cache"] is None
    assert again.route["semantic_cache"] == "skipped: tool-calling turn"
    assert openai_platform.requests_to("/embeddings") == []


def test_without_an_embedding_model_the_semantic_cache_is_off_and_says_so(world, openai_platform, settings):
    settings.LLM_SEMANTIC_CACHE_MODEL = ""
    gateway_reset()
    response = chat(
        ask("gpt-4o-mini", "anything"), CallContext(organization_id=world.alpha.pk, semantic_cache=True)
    )
    assert response.route["semantic_cache"].startswith("off: no embedding model configured")


def test_with_redis_down_calls_still_answer_and_l1_still_serves(world, openai_platform, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    gateway_reset()
    context = CallContext(organization_id=world.alpha.pk)
    first = chat(ask("gpt-4o-mini", "no redis"), context)
    assert first.route["cache"] is None
    assert gateway().cache.redis_down  # and skipped for a while, not retried on every call
    assert chat(ask("gpt-4o-mini", "no redis"), context).route["cache"] == "l1"
    assert len(openai_platform.chat_requests) == 1


def test_a_failing_embedder_makes_the_semantic_cache_miss_not_the_call_fail(world, openai_platform, settings):
    semantic_gateway(settings)
    settings.LLM_RETRY_ATTEMPTS = 0
    openai_platform.script(Reply.error(500, "embeddings down"), endpoint="embeddings")
    response = chat(
        ask("gpt-4o-mini", "still answered?"),
        CallContext(organization_id=world.alpha.pk, semantic_cache=True),
    )
    assert response.message.content == "Echo: still answered?"
    assert response.route["semantic_cache"] == "skipped: the embedding failed (provider_unavailable)"
