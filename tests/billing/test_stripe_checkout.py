"""Subscribing through Stripe: the customer made once per organization, the Checkout
Session a paid plan sends the browser to, the Customer Portal, a plan change of a live
subscription, invoices read back, and the clear refusals when Stripe cannot be used."""

import pytest
from django.test import override_settings

from apps.billing.models import BillingAccount, Invoice, Plan, StripeEvent
from apps.billing.plans import billing_account_for
from apps.billing.stripe_adapter import StripeNotConfigured, StripeRefused, StripeUnavailable
from apps.billing.subscriptions import (
    card_setup_session_create,
    checkout_session_create,
    customer_for,
    invoices_sync,
    portal_session_create,
)
from apps.billing.webhooks import stripe_event_process, stripe_event_record, stripe_events_pending
from apps.core.errors import Invalid
from apps.tenancy.models import Organization
from tests.billing.stripe_helpers import catalogue_prices, fake, payer  # noqa: F401 (fixtures)
from tests.fakes.stripe_server import FakeStripe, stripe_fake  # noqa: F401 (a fixture)

pytestmark = pytest.mark.django_db

SUCCESS = "https://alpha.example.test/billing/checkout/success/?session_id={CHECKOUT_SESSION_ID}"
CANCEL = "https://alpha.example.test/billing/checkout/cancel/"


def plan(key: str) -> Plan:
    return Plan.objects.get(key=key)


def test_the_customer_is_made_once_per_organization(fake: FakeStripe, payer: Organization) -> None:  # noqa: F811
    first = customer_for(organization=payer, email="owner@payer.test")
    # A second account row read fresh, as another process would, finds it stored.
    assert customer_for(organization=payer) == first
    assert billing_account_for(payer).stripe_customer_id == first
    customer = fake.get("customer", first)
    assert customer["metadata"]["organization_id"] == str(payer.pk)
    assert (customer["name"], customer["email"]) == (payer.name, "owner@payer.test")


def test_a_paid_plan_goes_to_a_checkout_page_with_its_fee_and_metered_prices(
    fake: FakeStripe,  # noqa: F811
    payer: Organization,  # noqa: F811
) -> None:
    prices = catalogue_prices(fake)
    session = checkout_session_create(
        organization=payer, plan=plan("team"), success_url=SUCCESS, cancel_url=CANCEL
    )
    assert session.url == f"{fake.origin}/checkout/{session.id}"
    stored = fake.get("checkout.session", session.id)
    assert stored["mode"] == "subscription"
    assert stored["customer"] == billing_account_for(payer).stripe_customer_id
    assert stored["client_reference_id"] == str(payer.pk)
    assert (stored["success_url"], stored["cancel_url"]) == (SUCCESS, CANCEL)
    items = {item["price"]["id"]: item["quantity"] for item in stored["_line_items"]}
    assert items[prices["team"]] == 1
    assert items[prices["team_llm_input_tokens"]] is None  # metered: no quantity
    assert len(items) == 6
    assert stored["_subscription_data"]["metadata"] == {"organization_id": str(payer.pk), "plan": "team"}


def test_pay_as_you_go_subscribes_to_metered_prices_only(fake: FakeStripe, payer: Organization) -> None:  # noqa: F811
    prices = catalogue_prices(fake)
    session = checkout_session_create(
        organization=payer, plan=plan("payg"), success_url=SUCCESS, cancel_url=CANCEL
    )
    stored = fake.get("checkout.session", session.id)
    assert {item["price"]["id"] for item in stored["_line_items"]} == {
        price for key, price in prices.items() if key.startswith("payg_")
    }


def test_the_free_plan_and_a_plan_without_prices_cannot_be_bought(
    fake: FakeStripe,  # noqa: F811
    payer: Organization,  # noqa: F811
) -> None:
    catalogue_prices(fake)
    with pytest.raises(Invalid) as free:
        checkout_session_create(organization=payer, plan=plan("free"), success_url=SUCCESS, cancel_url=CANCEL)
    assert "free" in free.value.message
    custom = Plan.objects.create(
        key="custom-unpriced", name="Custom", kind=Plan.Kind.CUSTOM, organization=payer
    )
    with pytest.raises(Invalid) as unpriced:
        checkout_session_create(organization=payer, plan=custom, success_url=SUCCESS, cancel_url=CANCEL)
    assert unpriced.value.code == "plan_not_purchasable"
    assert "no Stripe price" in unpriced.value.message


def test_without_a_key_stripe_is_refused_with_what_to_set(payer: Organization) -> None:  # noqa: F811
    with override_settings(STRIPE_API_KEY=""), pytest.raises(StripeNotConfigured) as caught:
        portal_session_create(organization=payer, return_url="https://x.test/billing/")
    assert caught.value.status == 503
    assert "STRIPE_API_KEY" in caught.value.message


def test_stripe_down_is_a_503_that_says_so_and_stores_nothing(
    fake: FakeStripe,  # noqa: F811
    payer: Organization,  # noqa: F811
) -> None:
    fake.fail("/v1/customers")
    with pytest.raises(StripeUnavailable) as caught:
        portal_session_create(organization=payer, return_url="https://x.test/billing/")
    assert caught.value.status == 503
    assert "try again" in caught.value.message
    assert billing_account_for(payer).stripe_customer_id == ""
    fake.clear_failures()
    fake.fail("/v1/customers", drop=True)
    with pytest.raises(StripeUnavailable, match="could not be reached"):
        customer_for(organization=payer)


def test_a_refusal_by_stripe_is_a_502_with_stripes_message(
    fake: FakeStripe,  # noqa: F811
    payer: Organization,  # noqa: F811
) -> None:
    account = billing_account_for(payer)
    account.stripe_customer_id = "cus_deleted_long_ago"
    account.save()
    with pytest.raises(StripeRefused) as caught:
        portal_session_create(organization=payer, return_url="https://x.test/billing/")
    assert caught.value.status == 502
    assert "No such customer: 'cus_deleted_long_ago'" in caught.value.message


def test_the_portal_link_is_for_the_organizations_customer(fake: FakeStripe, payer: Organization) -> None:  # noqa: F811
    url = portal_session_create(organization=payer, return_url="https://alpha.example.test/billing/")
    portal = next(p for p in fake.objects("billing_portal.session") if p["url"] == url)
    assert portal["customer"] == billing_account_for(payer).stripe_customer_id
    assert portal["return_url"] == "https://alpha.example.test/billing/"


def test_adding_a_card_is_a_setup_session(fake: FakeStripe, payer: Organization) -> None:  # noqa: F811
    session = card_setup_session_create(organization=payer, success_url=SUCCESS, cancel_url=CANCEL)
    assert fake.get("checkout.session", session.id)["mode"] == "setup"
    fake.complete_checkout(session.id)
    customer = fake.get("customer", billing_account_for(payer).stripe_customer_id)
    assert customer["invoice_settings"]["default_payment_method"].startswith("pm_")


def test_changing_plan_with_a_live_subscription_changes_it_in_place(
    fake: FakeStripe,  # noqa: F811
    payer: Organization,  # noqa: F811
) -> None:
    prices = catalogue_prices(fake)
    session = checkout_session_create(
        organization=payer, plan=plan("team"), success_url=SUCCESS, cancel_url=CANCEL
    )
    fake.complete_checkout(session.id)
    for event in fake.events[-3:]:  # what the webhook would store and the worker apply
        stripe_event_record(event=event)
        stripe_event_process(event_id=event["id"])
    account = billing_account_for(payer)
    assert (account.plan.key, account.status) == ("team", BillingAccount.Status.ACTIVE)

    again = checkout_session_create(
        organization=payer, plan=plan("business"), success_url=SUCCESS, cancel_url=CANCEL
    )
    assert again.id == ""
    assert again.url == SUCCESS.replace("{CHECKOUT_SESSION_ID}", "")
    subscription = fake.get("subscription", account.stripe_subscription_id)
    assert {item["price"]["id"] for item in subscription["items"]["data"]} == {
        price for key, price in prices.items() if key == "business" or key.startswith("business_")
    }
    updated = fake.events_of("customer.subscription.updated")[-1]
    stripe_event_record(event=updated)
    stripe_event_process(event_id=updated["id"])
    assert billing_account_for(payer).plan.key == "business"


def test_invoices_are_read_back_from_stripe(fake: FakeStripe, payer: Organization) -> None:  # noqa: F811
    catalogue_prices(fake)
    session = checkout_session_create(
        organization=payer, plan=plan("team"), success_url=SUCCESS, cancel_url=CANCEL
    )
    fake.complete_checkout(session.id)  # its webhooks were never received
    assert invoices_sync(organization=payer) == 1
    invoice = Invoice.objects.get(organization=payer)
    assert (invoice.status, str(invoice.total), invoice.number.startswith("FAKE-")) == ("paid", "49.00", True)


def test_an_event_whose_task_was_lost_is_enqueued_again(fake: FakeStripe) -> None:  # noqa: F811
    from datetime import timedelta

    from django.utils import timezone

    event = fake.send_event("customer.updated", {"id": "cus_lost", "object": "customer"}, deliver=False)
    stripe_event_record(event=event)  # its on_commit task never runs inside this test's transaction
    assert stripe_events_pending(now=timezone.now()) == 0  # too recent: its task may still come
    assert stripe_events_pending(now=timezone.now() + timedelta(minutes=10)) == 1
    assert StripeEvent.objects.get(event_id=event["id"]).processed_at is None
