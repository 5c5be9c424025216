"""The ledger itself: usage_record and usage_record_many write append-only rows and add
them to the hourly and daily roll-ups in one statement; an idempotency key already
there writes nothing (neither row nor roll-up); prices come from the plan or the
platform defaults; bad input is refused whole; PostgreSQL refuses to change a row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import Sum

from apps.billing.ledger import UsageLine, usage_record, usage_record_many
from apps.billing.models import BillingAccount, Plan, UsageDaily, UsageHourly, UsageRecord
from apps.core.errors import Invalid
from tests.conftest import World

pytestmark = pytest.mark.django_db

DAY = datetime(2026, 3, 14, tzinfo=UTC)


def line(world: World, key: str, quantity: str, when: datetime, **fields: object) -> UsageLine:
    values: dict[str, object] = {
        "organization_id": world.alpha.pk,
        "kind": "sandbox_seconds",
        "quantity": Decimal(quantity),
        "idempotency_key": key,
        "source_type": "workspace",
        "source_id": "ledger-test",
        "occurred_at": when,
    }
    values.update(fields)
    return UsageLine(**values)  # type: ignore[arg-type]


def test_a_row_is_written_once_whatever_the_retries(world: World) -> None:
    arguments = {
        "organization_id": world.alpha.pk,
        "kind": "sandbox_seconds",
        "quantity": 90,
        "source_type": "workspace",
        "source_id": "ledger-once",
        "idempotency_key": "test:ledger-once",
        "occurred_at": DAY + timedelta(hours=5, minutes=20),
    }
    assert usage_record(**arguments) is True  # type: ignore[arg-type]
    assert usage_record(**arguments) is False  # type: ignore[arg-type]
    assert usage_record_many([line(world, "test:ledger-once", "90", DAY)]) == 0
    row = UsageRecord.objects.get(idempotency_key="test:ledger-once")
    assert (row.quantity, row.unit) == (Decimal(90), "second")
    hourly = UsageHourly.objects.get(organization=world.alpha, source_id="ledger-once")
    assert (hourly.hour, hourly.quantity, hourly.amount) == (
        DAY + timedelta(hours=5),
        Decimal(90),
        row.amount,
    )
    assert UsageDaily.objects.get(organization=world.alpha, source_id="ledger-once").quantity == 90


def test_roll_ups_equal_the_sums_of_the_rows_by_hour_and_day(world: World) -> None:
    lines = [
        line(world, f"test:sum-{number}", f"{number}.5", DAY + timedelta(minutes=37 * number))
        for number in range(1, 80)  # about two days, 79 rows, in one statement
    ]
    lines.append(line(world, "test:sum-1", "1000", DAY))  # a repeated key in the batch: once
    assert usage_record_many(lines) == 79
    records = UsageRecord.objects.filter(organization=world.alpha, source_id="ledger-test")
    by_hour = {
        hour: (quantity, amount)
        for hour, quantity, amount in UsageHourly.objects.filter(
            organization=world.alpha, source_id="ledger-test"
        ).values_list("hour", "quantity", "amount")
    }
    expected_hours: dict[datetime, tuple[Decimal, Decimal]] = {}
    expected_days: dict[object, tuple[Decimal, Decimal]] = {}
    for record in records:
        hour = record.occurred_at.replace(minute=0, second=0, microsecond=0)
        quantity, amount = expected_hours.get(hour, (Decimal(0), Decimal(0)))
        expected_hours[hour] = (quantity + record.quantity, amount + record.amount)
        quantity, amount = expected_days.get(hour.date(), (Decimal(0), Decimal(0)))
        expected_days[hour.date()] = (quantity + record.quantity, amount + record.amount)
    assert by_hour == expected_hours
    assert {
        day: (quantity, amount)
        for day, quantity, amount in UsageDaily.objects.filter(
            organization=world.alpha, source_id="ledger-test"
        ).values_list("day", "quantity", "amount")
    } == expected_days
    assert len(expected_days) == 3
    total = records.aggregate(quantity=Sum("quantity"))["quantity"]
    assert total == sum(Decimal(f"{number}.5") for number in range(1, 80))


def test_prices_come_from_the_plan_else_the_platform_defaults(world: World, settings: object) -> None:
    settings.BILLING_DEFAULT_UNIT_PRICES = {  # type: ignore[attr-defined]
        "sandbox_seconds": "0.002",
        "storage_gb_hours": "0.25",
    }
    plan = Plan.objects.create(
        key="ledger-priced",
        name="Priced",
        kind="custom",
        public=False,
        unit_prices={"sandbox_seconds": "0.01"},
    )
    BillingAccount.objects.update_or_create(organization=world.alpha, defaults={"plan": plan})
    BillingAccount.objects.filter(organization=world.beta).delete()  # Beta: the default plan (Business)
    usage_record_many(
        [
            line(world, "test:price-plan", "100", DAY),
            line(world, "test:price-default", "4", DAY, kind="storage_gb_hours", source_type="system"),
            line(world, "test:price-beta", "100", DAY, organization_id=world.beta.pk),
            line(world, "test:price-given", "100", DAY, unit_price=Decimal("0.5")),
        ]
    )
    prices = dict(
        UsageRecord.objects.filter(idempotency_key__startswith="test:price-").values_list(
            "idempotency_key", "amount"
        )
    )
    business = Plan.objects.get(key=settings.BILLING_DEFAULT_PLAN)  # type: ignore[attr-defined]
    assert prices == {
        "test:price-plan": Decimal("1.00"),  # the plan's 0.01 per second
        "test:price-default": Decimal("1.00"),  # the plan names no storage price: 0.25 per GB-hour
        "test:price-beta": 100 * Decimal(business.unit_prices["sandbox_seconds"]),
        "test:price-given": Decimal("50"),
    }


def test_bad_lines_are_refused_and_nothing_of_the_batch_is_written(world: World) -> None:
    good = line(world, "test:bad-batch-good", "5", DAY)
    for bad, field in (
        (line(world, "test:bad-1", "-1", DAY), "quantity"),
        (line(world, "test:bad-2", "5", DAY, kind="gold_bars"), "kind"),
        (line(world, "test:bad-3", "5", DAY, source_type="someone"), "source_type"),
        (line(world, "", "5", DAY), "idempotency_key"),
        (line(world, "test:bad-4", "NaN", DAY), "quantity"),
    ):
        with pytest.raises(Invalid) as refused:
            usage_record_many([good, bad])
        assert refused.value.field == field
    with pytest.raises(Invalid, match="must be a number"):
        usage_record(
            organization_id=world.alpha.pk,
            kind="sandbox_seconds",
            quantity="lots",
            source_type="workspace",
            idempotency_key="test:bad-5",
        )
    assert not UsageRecord.objects.filter(idempotency_key__startswith="test:bad").exists()
    assert usage_record_many([line(world, "test:zero", "0", DAY)]) == 0  # nothing used, nothing written


def _delete_checked_now(key: str) -> None:
    """The DELETE check runs at commit (the test's transaction never commits); ask for it now."""
    UsageRecord.objects.filter(idempotency_key=key).delete()
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")


def test_postgresql_refuses_to_change_or_delete_a_ledger_row(world: World) -> None:
    usage_record_many([line(world, "test:append-only", "7", DAY)])
    with pytest.raises(IntegrityError, match="append-only"), transaction.atomic():
        UsageRecord.objects.filter(idempotency_key="test:append-only").update(quantity=1)
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        _delete_checked_now("test:append-only")
    assert UsageRecord.objects.get(idempotency_key="test:append-only").quantity == 7


def test_one_organizations_usage_never_shows_in_anothers_roll_ups(world: World) -> None:
    usage_record_many(
        [
            line(world, "test:iso-alpha", "10", DAY, source_id="shared-name"),
            line(world, "test:iso-beta", "3", DAY, source_id="shared-name", organization_id=world.beta.pk),
        ]
    )
    for table in (UsageHourly, UsageDaily):
        assert table.objects.get(organization=world.alpha, source_id="shared-name").quantity == 10
        assert table.objects.get(organization=world.beta, source_id="shared-name").quantity == 3
