"""LLM usage in the billing ledger: real gateway calls (the real `openai` SDK against the
loopback fake OpenAI API) become UsageRecords when the gateway's metering flushes, one
per (organization, hour, model, source, user, kind), in the transaction of its own
roll-ups; a flush whose write failed is retried under its flush id and writes once."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import psycopg
import pytest
from django.db import OperationalError, connection, transaction
from django.db.models import Sum
from django.utils import timezone

from apps.billing.models import UsageDaily, UsageHourly, UsageRecord
from apps.llm import models as llm_models
from apps.llm.metering import Key, Sums, meter, usage_batch_write
from apps.llm.types import CallContext, Usage
from apps.tenancy.models import Organization
from tests.api.conftest import key_client, new_key
from tests.conftest import World
from tests.fakes.llm_fake import Reply
from tests.fakes.openai_server import FakeOpenAI
from tests.llm.gateway_helpers import ask, chat

pytestmark = pytest.mark.django_db

MILLION = Decimal(1_000_000)
# gpt-4o-mini in the catalogue: USD per million input, output and cached input tokens.
INPUT, OUTPUT, CACHED = Decimal("0.15"), Decimal("0.60"), Decimal("0.075")


def rows(organization_id: int, **filters: object) -> dict[str, UsageRecord]:
    return {row.kind: row for row in UsageRecord.objects.filter(organization_id=organization_id, **filters)}


def test_gateway_calls_become_ledger_rows_per_source_after_a_flush(
    world: World,
    openai_platform: FakeOpenAI,
    settings: object,
) -> None:
    settings.LLM_METERING_FLUSH_SECONDS = 3600  # type: ignore[attr-defined]
    openai_platform.script(
        Reply(usage=(1000, 200, 400)),  # the agent run: 400 of 1000 input tokens from the prompt cache
        Reply(usage=(3000, 100, 0)),  # the same run again
        Reply(usage=(500, 50, 0)),  # the user at the keyboard
    )
    run = CallContext(
        organization_id=world.alpha.pk, user_id=world.alice.pk, run_id="run-ledger-1", cache=False
    )
    chat(ask("gpt-4o-mini", "one"), run)
    chat(ask("gpt-4o-mini", "two"), run)
    chat(ask("gpt-4o-mini", "three"), CallContext(organization_id=world.alpha.pk, user_id=world.amy.pk))
    assert not UsageRecord.objects.filter(organization=world.alpha, source_id="run-ledger-1").exists()

    meter().flush()

    by_run = rows(world.alpha.pk, source_type="agent_run", source_id="run-ledger-1")
    assert {kind: row.quantity for kind, row in by_run.items()} == {
        "llm_input_tokens": 3600,  # 4000 input, less the 400 served from the cache
        "llm_cached_tokens": 400,
        "llm_output_tokens": 300,
    }
    for kind, price in (
        ("llm_input_tokens", INPUT),
        ("llm_cached_tokens", CACHED),
        ("llm_output_tokens", OUTPUT),
    ):
        row = by_run[kind]
        assert (row.model, row.user_id, row.unit) == ("gpt-4o-mini", world.alice.pk, "token")
        assert row.unit_price == price / MILLION
        assert row.amount == row.quantity * price / MILLION
        assert row.occurred_at.minute == row.occurred_at.second == 0  # the hour it was used in
    by_user = rows(world.alpha.pk, source_type="user", source_id=str(world.amy.pk))
    assert {kind: row.quantity for kind, row in by_user.items()} == {
        "llm_input_tokens": 500,
        "llm_output_tokens": 50,
    }
    assert by_user["llm_input_tokens"].amount == 500 * INPUT / MILLION

    # The ledger's total is what the gateway metered (its own roll-ups, written in the same flush).
    ledger_total = UsageRecord.objects.filter(organization=world.alpha, source_id="run-ledger-1").aggregate(
        total=Sum("amount")
    )["total"]
    gateway_total = llm_models.UsageDaily.objects.get(
        organization=world.alpha, run_id="run-ledger-1"
    ).cost_usd
    assert ledger_total == gateway_total > 0


def test_calls_with_an_api_key_are_charged_to_the_key(world: World, openai_platform: FakeOpenAI) -> None:
    """Through the OpenAI-compatible endpoint, as an API client calls it."""
    api_key, raw = new_key(world, ["llm:write"], name="ledger key")
    openai_platform.script(Reply(text="hi", usage=(120, 30, 0)))
    response = key_client(raw).post(
        "/v1/chat/completions",
        data=json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}),
        content_type="application/json",
    )
    assert response.status_code == 200, response.content
    meter().flush()
    by_key = rows(world.alpha.pk, source_type="api_key", source_id=str(api_key.pk))
    assert {kind: row.quantity for kind, row in by_key.items()} == {
        "llm_input_tokens": 120,
        "llm_output_tokens": 30,
    }
    assert by_key["llm_output_tokens"].amount == 30 * OUTPUT / MILLION


def test_failed_calls_and_cache_hits_cost_nothing_in_the_ledger(
    world: World,
    openai_platform: FakeOpenAI,
    settings: object,
) -> None:
    settings.LLM_RETRY_ATTEMPTS = 0  # type: ignore[attr-defined]
    context = CallContext(organization_id=world.alpha.pk, run_id="run-ledger-cache")
    openai_platform.script(Reply(usage=(100, 10, 0)))
    chat(ask("gpt-4o-mini", "cache me"), context)
    chat(ask("gpt-4o-mini", "cache me"), context)  # answered from the cache
    meter().flush()
    by_run = rows(world.alpha.pk, source_id="run-ledger-cache")
    assert {kind: row.quantity for kind, row in by_run.items()} == {
        "llm_input_tokens": 100,
        "llm_output_tokens": 10,
    }


def test_roll_ups_hold_the_sums_of_the_rows(world: World, openai_platform: FakeOpenAI) -> None:
    for number in range(3):
        openai_platform.script(Reply(usage=(100 * (number + 1), 10, 0)))
        chat(ask("gpt-4o-mini", f"q{number}"), CallContext(organization_id=world.beta.pk, run_id="run-beta"))
        meter().flush()  # three flushes: three rows per kind, added to the same roll-up rows
    records = UsageRecord.objects.filter(organization=world.beta, source_id="run-beta")
    assert records.filter(kind="llm_input_tokens").count() == 3
    for table in (UsageHourly, UsageDaily):
        rollups = table.objects.filter(organization=world.beta, source_id="run-beta")
        assert {r.kind: (r.quantity, r.amount) for r in rollups} == {
            kind: (quantity, amount)
            for kind, quantity, amount in records.values("kind")
            .annotate(quantity=Sum("quantity"), amount=Sum("amount"))
            .values_list("kind", "quantity", "amount")
        }
    assert UsageDaily.objects.get(
        organization=world.beta, source_id="run-beta", kind="llm_input_tokens"
    ).quantity == Decimal(600)
    # Beta's calls are nowhere in Alpha's ledger or roll-ups.
    assert not UsageRecord.objects.filter(organization=world.alpha, source_id="run-beta").exists()
    assert not UsageDaily.objects.filter(organization=world.alpha, source_id="run-beta").exists()


def test_a_flush_that_failed_is_retried_and_writes_everything_once(
    world: World,
    openai_platform: FakeOpenAI,
    settings: object,
) -> None:
    """The ledger table is locked by another session, so the flush's write times out and
    rolls back; the next flush writes that batch once, and a third writes nothing more."""
    settings.LLM_METERING_FLUSH_SECONDS = 3600  # type: ignore[attr-defined]
    openai_platform.script(Reply(usage=(700, 70, 0)))
    context = CallContext(organization_id=world.alpha.pk, run_id="run-ledger-retry")
    chat(ask("gpt-4o-mini", "retry me"), context)
    dsn = connection.get_connection_params()
    with psycopg.connect(
        dbname=dsn["dbname"],
        user=dsn.get("user"),
        host=dsn.get("host"),
        port=dsn.get("port"),
        autocommit=False,
    ) as other:
        # EXCLUSIVE: reads go on, writes wait.
        other.execute(f"LOCK TABLE {UsageRecord._meta.db_table} IN EXCLUSIVE MODE")
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL lock_timeout = '300ms'")
        with pytest.raises(OperationalError):
            meter().flush()
        other.rollback()
    assert not UsageRecord.objects.filter(source_id="run-ledger-retry").exists()
    assert not llm_models.UsageDaily.objects.filter(
        organization=world.alpha, run_id="run-ledger-retry"
    ).exists()
    assert meter().pending_cost(organization_id=world.alpha.pk) > 0  # budgets still count it

    assert meter().flush() == 1
    assert meter().flush() == 0
    by_run = rows(world.alpha.pk, source_id="run-ledger-retry")
    assert {kind: row.quantity for kind, row in by_run.items()} == {
        "llm_input_tokens": 700,
        "llm_output_tokens": 70,
    }
    assert UsageDaily.objects.get(source_id="run-ledger-retry", kind="llm_input_tokens").quantity == 700
    gateway_row = llm_models.UsageDaily.objects.get(organization=world.alpha, run_id="run-ledger-retry")
    assert (gateway_row.requests, gateway_row.input_tokens) == (1, 700)


def test_a_batch_written_again_under_its_flush_id_writes_nothing(world: World) -> None:
    """A flush that committed but whose COMMIT answer was lost is retried with the same
    id: neither the ledger nor any roll-up (the ledger's or the gateway's) grows."""
    hour = timezone.now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    key: Key = (world.alpha.pk, hour, "gpt-4o-mini", "openai", world.alice.pk, 0, "run-ledger-replay")
    sums = Sums(requests=2, input_tokens=2000, output_tokens=100, cost_usd=Decimal("0.00036"))

    def write() -> int:
        with transaction.atomic():
            return usage_batch_write(flush_id="flush-replayed", pending={key: sums})

    assert write() == 1
    assert write() == 0
    by_run = rows(world.alpha.pk, source_id="run-ledger-replay")
    assert {kind: row.quantity for kind, row in by_run.items()} == {
        "llm_input_tokens": 2000,
        "llm_output_tokens": 100,
    }
    assert sum(row.amount for row in by_run.values()) == Decimal("0.00036")
    assert by_run["llm_input_tokens"].occurred_at == hour
    assert UsageHourly.objects.get(source_id="run-ledger-replay", kind="llm_input_tokens").quantity == 2000
    gateway_row = llm_models.UsageHourly.objects.get(organization=world.alpha, run_id="run-ledger-replay")
    assert (gateway_row.requests, gateway_row.input_tokens) == (2, 2000)
    # A different flush of the same sums is new usage, and counts.
    with transaction.atomic():
        assert usage_batch_write(flush_id="flush-next", pending={key: sums}) == 1
    assert UsageHourly.objects.get(source_id="run-ledger-replay", kind="llm_input_tokens").quantity == 4000


def test_usage_of_an_organization_deleted_before_the_flush_does_not_hold_up_the_rest(world: World) -> None:
    gone = Organization.objects.create(name="Gone", slug="gone-ledger", schema_name="gone_ledger")
    hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    for organization_id in (gone.pk, world.alpha.pk):
        meter().record(
            context=CallContext(organization_id=organization_id, run_id="run-ledger-gone"),
            model="gpt-4o-mini",
            provider="openai",
            usage=Usage(input_tokens=50, output_tokens=5),
            cost_usd=0.0000105,
        )
    Organization.objects.filter(pk=gone.pk).delete()
    assert meter().flush() == 1
    assert meter().flush() == 0  # nothing left behind to retry
    assert not UsageRecord.objects.filter(organization_id=gone.pk).exists()
    by_run = rows(world.alpha.pk, source_id="run-ledger-gone")
    assert {kind: row.quantity for kind, row in by_run.items()} == {
        "llm_input_tokens": 50,
        "llm_output_tokens": 5,
    }
    assert by_run["llm_input_tokens"].occurred_at == hour
