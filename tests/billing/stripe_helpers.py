"""What the Stripe tests share: the fake (tests/fakes/stripe_server.py) reset around each
test, a fresh organization row per test (public schema only: billing needs no tenant
schema), and the plan catalogue's prices and meters created in the fake the way the README
tells an operator to create them in Stripe."""

import itertools
import os
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from apps.billing.models import BillingAccount, Plan, StripeEvent, UsageKind
from apps.billing.reporting import event_name_for
from apps.tenancy.models import Organization
from tests.fakes.stripe_server import FakeStripe

_numbers = itertools.count(1)


@pytest.fixture
def fake(stripe_fake: FakeStripe) -> Iterator[FakeStripe]:
    """The session's fake Stripe with no failures set and no webhook endpoint."""
    stripe_fake.clear_failures()
    stripe_fake.webhook_url = None
    stripe_fake.webhook_handler = None
    yield stripe_fake
    stripe_fake.clear_failures()
    stripe_fake.webhook_url = None
    stripe_fake.webhook_handler = None


def organization_make(name: str = "Payer") -> Organization:
    number = next(_numbers)
    slug = f"payer{os.getpid()}x{number}"
    return Organization.objects.create(
        name=f"{name} {number}", slug=slug, schema_name=slug, status=Organization.Status.ACTIVE
    )


@pytest.fixture
def payer(db: None) -> Organization:
    """A fresh organization (rolled back with the test)."""
    return organization_make()


@pytest.fixture
def live_payer(live_db: Any) -> Iterator[Organization]:
    """A fresh, committed organization, deleted afterwards with its billing rows and the
    Stripe events that named its customer."""
    organization = organization_make()
    yield organization
    customer = (
        BillingAccount.objects.filter(organization=organization)
        .values_list("stripe_customer_id", flat=True)
        .first()
    )
    if customer:
        StripeEvent.objects.filter(payload__data__object__customer=customer).delete()
    organization.delete()  # type: ignore[no-untyped-call]


def catalogue_prices(fake: FakeStripe) -> dict[str, str]:
    """Products, base-fee prices (lookup_key = plan key) and metered prices (lookup_key =
    "<plan>_<kind>", each backed by the kind's Billing Meter) for the catalogue's paid
    plans; made once per fake. Returns {lookup key: price id}."""
    import stripe

    client = stripe.StripeClient("sk_test_fake", base_addresses=fake.base_addresses)
    existing = {
        price.lookup_key: price.id
        for price in client.v1.prices.list(params={"limit": 100}).auto_paging_iter()
    }
    if "team" in existing:
        return {str(key): str(value) for key, value in existing.items() if key}
    meters = {}
    for kind in UsageKind.values:
        meter = client.v1.billing.meters.create(
            params={
                "display_name": kind,
                "event_name": event_name_for(kind),
                "default_aggregation": {"formula": "sum"},
            }
        )
        meters[kind] = meter.id
    prices = {}
    for plan in Plan.objects.filter(organization__isnull=True).exclude(kind=Plan.Kind.FREE):
        product = client.v1.products.create(params={"name": f"Agentyard {plan.name}"})
        if plan.monthly_fee:
            price = client.v1.prices.create(
                params={
                    "product": product.id,
                    "currency": "usd",
                    "unit_amount": int(plan.monthly_fee * 100),
                    "recurring": {"interval": "month"},
                    "lookup_key": plan.key,
                }
            )
            prices[plan.key] = price.id
        for kind in UsageKind.values:
            price = client.v1.prices.create(
                params={
                    "product": product.id,
                    "currency": "usd",
                    "unit_amount_decimal": Decimal("0.001"),
                    "recurring": {"interval": "month", "usage_type": "metered", "meter": meters[kind]},
                    "lookup_key": f"{plan.key}_{kind}",
                }
            )
            prices[f"{plan.key}_{kind}"] = price.id
    return prices
