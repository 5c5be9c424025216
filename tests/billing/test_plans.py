"""The plan catalogue and the ledger's append-only guard."""

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.billing.features import FEATURES
from apps.billing.models import Plan, UsageRecord
from tests.conftest import World

pytestmark = pytest.mark.django_db


def test_the_catalogue_offers_free_payg_two_subscriptions_and_reserved_capacity() -> None:
    plans = {plan.key: plan for plan in Plan.objects.all()}
    assert {key: plans[key].kind for key in ("free", "payg", "team", "business", "reserved")} == {
        "free": "free",
        "payg": "payg",
        "team": "subscription",
        "business": "subscription",
        "reserved": "reserved",
    }
    assert plans["payg"].monthly_fee == 0
    assert plans["payg"].unit_prices
    assert plans["reserved"].monthly_fee > plans["business"].monthly_fee
    for plan in plans.values():
        assert set(plan.features) <= set(FEATURES), plan.key
    assert "sso" in plans["business"].features
    assert "sso" not in plans["team"].features


def test_a_usage_record_cannot_be_changed(world: World) -> None:
    record = UsageRecord.objects.create(
        organization=world.alpha,
        kind="sandbox_seconds",
        quantity=10,
        unit="second",
        source_type="workspace",
        source_id="1",
        idempotency_key="test-append-only",
        occurred_at=timezone.now(),
    )
    with pytest.raises(IntegrityError, match="append-only"), transaction.atomic():
        UsageRecord.objects.filter(pk=record.pk).update(quantity=1)
    with pytest.raises(IntegrityError, match="append-only"):
        _delete_now(record)
    record.refresh_from_db()
    assert record.quantity == 10


def _delete_now(record: UsageRecord) -> None:
    with transaction.atomic():
        UsageRecord.objects.filter(pk=record.pk).delete()
        # The check is deferred to commit; inside the test's transaction, run it now.
        with transaction.get_connection().cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
