"""The router's moving averages are shared between processes: a model failing in one
gateway is avoided by another within seconds, and each one's status shows the merged view.
Two Gateway objects stand for two processes (each has its own averages; only Redis joins them)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from asgiref.sync import async_to_sync

from apps.llm.gateway import Gateway
from apps.llm.router import shared_stats_clear
from apps.llm.types import CallContext, ChatRequest, ChatResponse
from tests.conftest import free_port, wait_for
from tests.fakes.llm_fake import Reply
from tests.fakes.openai_server import FakeOpenAI
from tests.llm.gateway_helpers import ask

pytestmark = pytest.mark.django_db

SIMPLE = "What's the capital of Peru?"


@pytest.fixture
def two_gateways(settings, openai_platform: FakeOpenAI) -> Iterator[tuple[Gateway, Gateway]]:
    settings.LLM_ROUTER_STATS_SYNC_SECONDS = 0.1
    settings.LLM_RETRY_ATTEMPTS = 0
    shared_stats_clear()
    first, second = Gateway(), Gateway()
    yield first, second
    for gateway in (first, second):
        gateway.router.stats.stop_sharing()
    shared_stats_clear()


def chat_through(gateway: Gateway, request: ChatRequest, context: CallContext) -> ChatResponse:
    async def call() -> ChatResponse:
        try:
            return await gateway.chat(request, context=context)
        finally:
            await gateway.close_loop_providers()

    return async_to_sync(call)()


def test_a_model_failing_in_one_process_is_avoided_by_another(world, openai_platform, two_gateways):
    failing_here, elsewhere = two_gateways
    context = CallContext(organization_id=world.alpha.pk, cache=False)
    assert chat_through(elsewhere, ask("auto", SIMPLE), context).route["model"] == "gpt-4.1-nano"

    # In the first process gpt-4.1-nano fails three times (a fallback answers each time).
    for attempt in range(3):
        openai_platform.script(Reply.error(500, "nano is down"))
        response = chat_through(failing_here, ask("gpt-4.1-nano", f"try {attempt}"), context)
        assert response.route["model"] != "gpt-4.1-nano"
    assert failing_here.router.stats.error_rate("gpt-4.1-nano") == 1.0

    # The other process learns it within a sync or two, and routes `auto` elsewhere.
    wait_for(lambda: elsewhere.status()["models"]["gpt-4.1-nano"]["error_rate"] > 0.5)
    assert elsewhere.status()["models"]["gpt-4.1-nano"]["processes"] == 2  # its success, the other's failures
    response = chat_through(elsewhere, ask("auto", SIMPLE), context)
    assert response.route["model"] != "gpt-4.1-nano"
    assert response.route["reason"].startswith("auto: simple request")


def test_with_sharing_off_each_process_keeps_its_own_view(world, openai_platform, two_gateways, settings):
    settings.LLM_ROUTER_STATS_SYNC_SECONDS = 0
    failing_here, elsewhere = two_gateways
    context = CallContext(organization_id=world.alpha.pk, cache=False)
    openai_platform.script(Reply.error(500, "nano is down"))
    chat_through(failing_here, ask("gpt-4.1-nano", "try"), context)
    assert failing_here.status()["models"]["gpt-4.1-nano"] == {
        "latency_ms": None,
        "error_rate": 1.0,
        "processes": 1,
    }
    assert "gpt-4.1-nano" not in elsewhere.status()["models"]
    assert chat_through(elsewhere, ask("auto", SIMPLE), context).route["model"] == "gpt-4.1-nano"


def test_with_redis_unreachable_each_process_routes_on_its_own_view(
    world, openai_platform, two_gateways, settings
):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    failing_here, elsewhere = two_gateways
    context = CallContext(organization_id=world.alpha.pk, cache=False)
    openai_platform.script(Reply.error(500, "nano is down"))
    response = chat_through(failing_here, ask("gpt-4.1-nano", "try"), context)
    assert response.route["model"] != "gpt-4.1-nano"
    assert failing_here.router.stats.sync() is False
    assert failing_here.status()["models"]["gpt-4.1-nano"]["error_rate"] == 1.0
    assert chat_through(elsewhere, ask("auto", SIMPLE), context).route["model"] == "gpt-4.1-nano"
