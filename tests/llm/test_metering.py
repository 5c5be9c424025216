"""Metering: calls summed in process, written in batches into hourly and daily roll-ups;
failures are counted and never billed."""

from decimal import Decimal

import pytest

from apps.llm.errors import ProviderFailed
from apps.llm.metering import meter
from apps.llm.models import UsageDaily, UsageHourly
from apps.llm.types import CallContext
from tests.fakes.llm_fake import Reply
from tests.llm.gateway_helpers import ask, chat

pytestmark = pytest.mark.django_db


def test_calls_are_written_as_one_roll_up_row_per_hour_model_user_key_and_run(
    world, openai_platform, settings
):
    settings.LLM_METERING_FLUSH_SECONDS = 3600
    openai_platform.script(Reply(usage=(1000, 200, 400)), Reply(usage=(2000, 100, 0)))
    context = CallContext(organization_id=world.alpha.pk, user_id=world.alice.pk, run_id="run-7")
    chat(ask("gpt-4o-mini", "one"), context)
    chat(ask("gpt-4o-mini", "two"), context)
    assert not UsageHourly.objects.filter(organization=world.alpha).exists()  # buffered, not written per call
    assert meter().flush() == 1
    hourly = UsageHourly.objects.get(organization=world.alpha)
    daily = UsageDaily.objects.get(organization=world.alpha)
    for row in (hourly, daily):
        assert (row.model, row.user_id, row.api_key_id, row.run_id) == (
            "gpt-4o-mini",
            world.alice.pk,
            0,
            "run-7",
        )
        assert (row.requests, row.input_tokens, row.output_tokens, row.cached_tokens) == (2, 3000, 300, 400)
        # gpt-4o-mini: 0.15 in, 0.075 cached in, 0.60 out per million tokens
        expected = (Decimal(2600) * Decimal("0.15") + 400 * Decimal("0.075") + 300 * Decimal("0.60")) / 10**6
        assert row.cost_usd == expected
    assert (hourly.hour.minute, hourly.hour.second) == (0, 0)


def test_a_second_flush_adds_to_the_same_row(world, openai_platform, settings):
    settings.LLM_METERING_FLUSH_SECONDS = 3600
    context = CallContext(organization_id=world.alpha.pk, cache=False)
    openai_platform.script(Reply(usage=(10, 5, 0)), Reply(usage=(20, 5, 0)))
    chat(ask("gpt-4o-mini"), context)
    meter().flush()
    chat(ask("gpt-4o-mini"), context)
    meter().flush()
    row = UsageDaily.objects.get(organization=world.alpha)
    assert (row.requests, row.input_tokens, row.output_tokens) == (2, 30, 10)


def test_the_buffer_flushes_itself_when_the_batch_is_full(world, openai_platform, settings):
    settings.LLM_METERING_BATCH_SIZE = 3
    settings.LLM_METERING_FLUSH_SECONDS = 3600
    context = CallContext(organization_id=world.alpha.pk, cache=False)
    for _ in range(2):
        chat(ask("gpt-4o-mini"), context)
    assert not UsageDaily.objects.filter(organization=world.alpha).exists()
    chat(ask("gpt-4o-mini"), context)
    assert UsageDaily.objects.get(organization=world.alpha).requests == 3


def test_the_buffer_flushes_itself_when_it_is_old_enough(world, openai_platform, settings):
    settings.LLM_METERING_FLUSH_SECONDS = 0
    chat(ask("gpt-4o-mini"), CallContext(organization_id=world.alpha.pk))
    assert UsageDaily.objects.get(organization=world.alpha).requests == 1


def test_failed_calls_are_counted_and_cost_nothing(world, openai_platform, settings):
    settings.LLM_RETRY_ATTEMPTS = 0
    openai_platform.default = Reply.error(500, "down", usage=(500, 500, 0))
    with pytest.raises(ProviderFailed):
        chat(ask("gpt-4o-mini"), CallContext(organization_id=world.alpha.pk))
    meter().flush()
    row = UsageDaily.objects.get(organization=world.alpha)
    assert (row.requests, row.failures, row.input_tokens, row.cost_usd) == (0, 1, 0, Decimal(0))


def test_cache_hits_count_as_requests_without_tokens(world, openai_platform):
    context = CallContext(organization_id=world.beta.pk, api_key_id=42)
    openai_platform.script(Reply(usage=(100, 10, 0)))
    chat(ask("gpt-4o-mini", "cache me"), context)
    chat(ask("gpt-4o-mini", "cache me"), context)
    meter().flush()
    row = UsageDaily.objects.get(organization=world.beta)
    assert (row.requests, row.cache_hits, row.input_tokens, row.api_key_id) == (2, 1, 100, 42)
    assert not UsageDaily.objects.filter(organization=world.alpha).exists()
