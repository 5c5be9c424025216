"""Stripe's webhooks the whole way: the fake Stripe posts signed events over HTTP to the
live server's /billing/stripe/webhook/, which answers at once and leaves the work to the
real Celery worker. What the organization's account shows is then waited for."""

import contextlib
import time
import urllib.request
from typing import Any

import pytest

from apps.billing.models import BillingAccount, Invoice, Plan, StripeEvent
from apps.billing.plans import billing_account_for
from apps.billing.subscriptions import checkout_session_create
from apps.tenancy.models import AuditEvent, Organization
from tests.billing.stripe_helpers import catalogue_prices, fake, live_payer  # noqa: F401 (fixtures)
from tests.conftest import LiveServer, wait_for
from tests.fakes.stripe_server import FakeStripe, stripe_fake  # noqa: F401 (a fixture)

pytestmark = pytest.mark.worker


@pytest.fixture
def endpoint(fake: FakeStripe, asgi_server: LiveServer, celery_worker: Any) -> FakeStripe:  # noqa: F811
    """The fake sends its webhooks to the live server, whose events the worker applies."""
    fake.webhook_url = f"http://127.0.0.1:{asgi_server.port}/billing/stripe/webhook/"
    return fake


def processed(event_id: str) -> StripeEvent:
    event: StripeEvent = wait_for(
        lambda: StripeEvent.objects.filter(event_id=event_id, processed_at__isnull=False).first(), timeout=30
    )
    return event


def changes(organization: Organization) -> int:
    return AuditEvent.objects.filter(organization=organization, action="billing.subscription_changed").count()


def test_paying_on_the_checkout_page_puts_the_organization_on_the_plan(
    endpoint: FakeStripe,
    live_payer: Organization,  # noqa: F811
) -> None:
    catalogue_prices(endpoint)
    session = checkout_session_create(
        organization=live_payer,
        plan=Plan.objects.get(key="team"),
        success_url="http://localhost/billing/checkout/success/?session_id={CHECKOUT_SESSION_ID}",
        cancel_url="http://localhost/billing/checkout/cancel/",
    )
    request = urllib.request.Request(  # noqa: S310 (the fake, on loopback)
        session.url, data=b"card=4242424242424242", method="POST"
    )
    # It redirects to success_url, whose host serves nothing here: the payment is what counts.
    with contextlib.suppress(OSError):
        urllib.request.urlopen(request)  # noqa: S310 (the fake, on loopback)
    deliveries = [
        d for d in endpoint.deliveries if d.type.startswith(("checkout", "customer.sub", "invoice"))
    ]
    assert [d.status for d in deliveries[-3:]] == [200, 200, 200]
    account = wait_for(
        lambda: BillingAccount.objects.filter(organization=live_payer, plan__key="team").first(), timeout=30
    )
    assert account.status == BillingAccount.Status.ACTIVE
    assert account.stripe_subscription_id.startswith("sub_")
    invoice = wait_for(
        lambda: Invoice.objects.filter(organization=live_payer, status="paid").first(), timeout=30
    )
    assert str(invoice.total) == "49.00"


def test_a_webhook_replayed_ten_times_is_one_state_change(
    endpoint: FakeStripe,
    live_payer: Organization,  # noqa: F811
) -> None:
    prices = catalogue_prices(endpoint)
    account = billing_account_for(live_payer)
    customer = endpoint.handle_api(
        "POST", "/v1/customers", {"name": "Replayed"}, {"authorization": "Bearer sk_test_fake"}
    )[1]
    account.stripe_customer_id = customer["id"]
    account.save()
    subscription = endpoint.handle_api(
        "POST",
        "/v1/subscriptions",
        {"customer": customer["id"], "items": [{"price": prices["business"], "quantity": "1"}]},
        {"authorization": "Bearer sk_test_fake"},
    )[1]
    endpoint.flush_pending()  # Stripe's own delivery of customer.subscription.created
    created = endpoint.events_of("customer.subscription.created")[-1]
    assert created["data"]["object"]["id"] == subscription["id"]
    statuses = [endpoint.deliver(created) for _ in range(9)]
    assert statuses == [200] * 9
    assert processed(created["id"]).outcome.startswith("applied")
    assert StripeEvent.objects.filter(event_id=created["id"]).count() == 1
    assert changes(live_payer) == 1
    assert billing_account_for(live_payer).plan.key == "business"


def test_events_out_of_order_leave_the_newest_state(
    endpoint: FakeStripe,
    live_payer: Organization,  # noqa: F811
) -> None:
    prices = catalogue_prices(endpoint)
    account = billing_account_for(live_payer)
    account.stripe_customer_id = f"cus_out_of_order_{live_payer.pk}"
    account.save()
    now = int(time.time())
    item = {
        "id": "si_1",
        "price": {"id": prices["team"], "lookup_key": "team"},
        "quantity": 1,
        "current_period_start": now,
        "current_period_end": now + 30 * 86400,
    }
    subscription = {
        "id": f"sub_ooo_{live_payer.pk}",
        "object": "subscription",
        "customer": account.stripe_customer_id,
        "status": "active",
        "cancel_at_period_end": False,
        "items": {"object": "list", "data": [item]},
        "metadata": {},
    }
    upgraded = {
        **subscription,
        "items": {
            "object": "list",
            "data": [{**item, "price": {"id": prices["business"], "lookup_key": "business"}}],
        },
    }
    newest = endpoint.send_event("customer.subscription.updated", upgraded, created=now + 20)
    middle = endpoint.send_event(
        "customer.subscription.updated", {**subscription, "status": "past_due"}, created=now + 10
    )
    oldest = endpoint.send_event("customer.subscription.created", subscription, created=now)
    outcomes = [processed(event["id"]).outcome for event in (newest, middle, oldest)]
    assert outcomes[0].startswith("applied")
    assert outcomes[1].startswith("ignored: older")
    assert outcomes[2].startswith("ignored: older")
    account.refresh_from_db()
    assert (account.plan.key, account.status) == ("business", BillingAccount.Status.ACTIVE)


def test_a_bad_signature_is_400_and_an_unknown_event_200_over_http(
    endpoint: FakeStripe,
    live_payer: Organization,  # noqa: F811
) -> None:
    before = billing_account_for(live_payer).plan.key
    forged = endpoint.send_event(
        "customer.subscription.deleted",
        {
            "id": "sub_x",
            "object": "subscription",
            "customer": "cus_x",
            "status": "canceled",
            "items": {"data": []},
        },
        deliver=False,
    )
    assert endpoint.deliver(forged, secret="whsec_forged") == 400
    assert not StripeEvent.objects.filter(event_id=forged["id"]).exists()
    unknown = endpoint.send_event("radar.early_fraud_warning.created", {"id": "issfr_1", "object": "x"})
    assert endpoint.deliveries[-1].status == 200
    assert processed(unknown["id"]).outcome.startswith("ignored: unhandled type")
    StripeEvent.objects.filter(event_id=unknown["id"]).delete()
    assert billing_account_for(live_payer).plan.key == before
