"""Stripe's webhooks at /billing/stripe/webhook/ on the bare domain: what an organization's
billing shows after Stripe tells us something, and that nothing else can change it.

Events come from the fake Stripe (tests/fakes/stripe_server.py), signed the real way, and
are posted with Django's test client; the Celery task's work is the service it calls
(stripe_event_process). tests/billing/test_stripe_webhooks_worker.py sends them over HTTP
to the live server with the real worker."""

import time
from typing import Any

import pytest
from django.conf import settings
from django.test import Client, override_settings

from apps.billing.models import BillingAccount, Invoice, StripeEvent
from apps.billing.plans import billing_account_for
from apps.billing.subscriptions import customer_for
from apps.billing.webhooks import stripe_event_process
from apps.tenancy.models import AuditEvent, Organization
from tests.billing.stripe_helpers import catalogue_prices, fake, payer  # noqa: F401 (fixtures)
from tests.fakes.stripe_server import FakeStripe, stripe_fake  # noqa: F401 (a fixture)

WEBHOOK = "/billing/stripe/webhook/"


def post(fake: FakeStripe, event: dict[str, Any], **signing: Any) -> Any:  # noqa: F811
    body, headers = fake.signed(event, **signing)
    return Client(HTTP_HOST=settings.BASE_DOMAIN).post(
        WEBHOOK, data=body, content_type="application/json", HTTP_STRIPE_SIGNATURE=headers["Stripe-Signature"]
    )


def deliver(fake: FakeStripe, event: dict[str, Any]) -> str:  # noqa: F811
    """Posts the event and does what the worker's task does with it; returns the outcome."""
    response = post(fake, event)
    assert response.status_code == 200, response.content
    return stripe_event_process(event_id=event["id"])


def subscribed(fake: FakeStripe, organization: Organization, plan: str = "team") -> dict[str, Any]:  # noqa: F811
    """A subscription to the plan's prices, made in the fake (its events not delivered)."""
    prices = catalogue_prices(fake)
    customer = customer_for(organization=organization)
    fake.handle_api(
        "POST",
        "/v1/subscriptions",
        {
            "customer": customer,
            "items": [{"price": prices[plan], "quantity": "1"}],
            "metadata": {"organization_id": str(organization.pk), "plan": plan},
        },
        {"authorization": "Bearer sk_test_fake"},
    )
    fake.flush_pending()
    return next(sub for sub in reversed(fake.objects("subscription")) if sub["customer"] == customer)


def changes(organization: Organization) -> int:
    return AuditEvent.objects.filter(organization=organization, action="billing.subscription_changed").count()


@pytest.mark.django_db
def test_a_subscription_created_puts_the_organization_on_its_plan(
    fake: FakeStripe,  # noqa: F811
    payer: Organization,  # noqa: F811
) -> None:
    subscription = subscribed(fake, payer)
    outcome = deliver(fake, fake.send_event("customer.subscription.created", subscription, deliver=False))
    account = billing_account_for(payer)
    assert outcome.startswith("applied")
    assert (account.plan.key, account.status) == ("team", BillingAccount.Status.ACTIVE)
    assert account.stripe_subscription_id == subscription["id"]
    period_end = subscription["items"]["data"][0]["current_period_end"]
    assert account.current_period_end is not None
    assert int(account.current_period_end.timestamp()) == period_end
    assert changes(payer) == 1


@pytest.mark.django_db
def test_a_webhook_replayed_ten_times_changes_the_account_once(
    fake: FakeStripe,  # noqa: F811
    payer: Organization,  # noqa: F811
) -> None:
    event = fake.send_event("customer.subscription.created", subscribed(fake, payer), deliver=False)
    answers = [post(fake, event) for _ in range(10)]
    assert [answer.status_code for answer in answers] == [200] * 10
    assert [answer.json()["duplicate"] for answer in answers] == [False] + [True] * 9
    for _ in range(10):  # the task, however often it runs
        stripe_event_process(event_id=event["id"])
    assert StripeEvent.objects.filter(event_id=event["id"]).count() == 1
    assert changes(payer) == 1
    assert billing_account_for(payer).plan.key == "team"


@pytest.mark.django_db
def test_an_older_event_arriving_late_does_not_undo_a_newer_one(
    fake: FakeStripe,  # noqa: F811
    payer: Organization,  # noqa: F811
) -> None:
    subscription = subscribed(fake, payer)
    now = int(time.time())
    cancelled = {**subscription, "cancel_at_period_end": True}
    # Stripe sent created (t), then updated (t+5, cancels at period end); they arrive reversed.
    newer = fake.send_event("customer.subscription.updated", cancelled, created=now + 5, deliver=False)
    older = fake.send_event("customer.subscription.created", subscription, created=now, deliver=False)
    assert deliver(fake, newer).startswith("applied")
    assert deliver(fake, older).startswith("ignored: older")
    account = billing_account_for(payer)
    assert account.cancel_at_period_end is True
    assert account.plan.key == "team"
    assert account.subscription_version == now + 5


@pytest.mark.django_db
def test_a_deleted_subscription_returns_the_organization_to_free_even_if_an_update_comes_after(
    fake: FakeStripe,  # noqa: F811
    payer: Organization,  # noqa: F811
) -> None:
    subscription = subscribed(fake, payer)
    now = int(time.time())
    deliver(fake, fake.send_event("customer.subscription.created", subscription, created=now, deliver=False))
    ended = {**subscription, "status": "canceled", "ended_at": now + 10}
    deliver(fake, fake.send_event("customer.subscription.deleted", ended, created=now + 10, deliver=False))
    late = fake.send_event("customer.subscription.updated", subscription, created=now + 3, deliver=False)
    assert deliver(fake, late).startswith("ignored: older")
    account = billing_account_for(payer)
    assert (account.plan.key, account.status) == ("free", BillingAccount.Status.CANCELED)
    assert changes(payer) == 2


@pytest.mark.django_db
def test_a_bad_signature_is_refused_and_changes_nothing(
    fake: FakeStripe,  # noqa: F811
    payer: Organization,  # noqa: F811
) -> None:
    event = fake.send_event("customer.subscription.created", subscribed(fake, payer), deliver=False)
    before = billing_account_for(payer).plan.key
    forged = post(fake, event, secret="whsec_not_ours")
    stale = post(fake, event, timestamp=int(time.time()) - settings.STRIPE_WEBHOOK_TOLERANCE_SECONDS - 60)
    unsigned = Client(HTTP_HOST=settings.BASE_DOMAIN).post(
        WEBHOOK, data=b"{}", content_type="application/json"
    )
    for response in (forged, stale, unsigned):
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_signature"
    assert "tolerance" in stale.json()["error"]["message"]
    assert not StripeEvent.objects.filter(event_id=event["id"]).exists()
    assert billing_account_for(payer).plan.key == before
    assert changes(payer) == 0


@pytest.mark.django_db
def test_a_body_that_is_not_an_event_is_a_400(fake: FakeStripe) -> None:  # noqa: F811
    body = b"not json"
    header = fake.signed({"id": "x"})[1]["Stripe-Signature"]  # a signature over another body
    response = Client(HTTP_HOST=settings.BASE_DOMAIN).post(
        WEBHOOK, data=body, content_type="application/json", HTTP_STRIPE_SIGNATURE=header
    )
    assert response.status_code == 400


@pytest.mark.django_db
def test_an_unknown_event_type_is_acknowledged_and_ignored(
    fake: FakeStripe,  # noqa: F811
    payer: Organization,  # noqa: F811
) -> None:
    event = fake.send_event(
        "customer.tax_id.created", {"id": "txi_1", "object": "tax_id", "customer": "cus_x"}, deliver=False
    )
    assert deliver(fake, event) == "ignored: unhandled type customer.tax_id.created"
    stored = StripeEvent.objects.get(event_id=event["id"])
    assert stored.processed_at is not None
    assert changes(payer) == 0


@pytest.mark.django_db
def test_the_webhook_answers_503_while_stripe_is_not_set_up(fake: FakeStripe) -> None:  # noqa: F811
    event = fake.send_event("customer.updated", {"id": "cus_x", "object": "customer"}, deliver=False)
    with override_settings(STRIPE_WEBHOOK_SECRET=""):
        response = post(fake, event)
    assert response.status_code == 503
    assert "STRIPE_WEBHOOK_SECRET" in response.json()["error"]["message"]


@pytest.mark.django_db
def test_the_webhook_is_only_on_the_bare_domain(fake: FakeStripe, world: Any) -> None:  # noqa: F811
    event = fake.send_event("customer.updated", {"id": "cus_x", "object": "customer"}, deliver=False)
    body, headers = fake.signed(event)
    response = Client(HTTP_HOST=f"{world.alpha.slug}.{settings.BASE_DOMAIN}").post(
        WEBHOOK, data=body, content_type="application/json", HTTP_STRIPE_SIGNATURE=headers["Stripe-Signature"]
    )
    assert response.status_code in {302, 403, 404}
    assert not StripeEvent.objects.filter(event_id=event["id"]).exists()


@pytest.mark.django_db
def test_an_event_for_another_organizations_customer_leaves_this_one_alone(
    fake: FakeStripe,  # noqa: F811
    payer: Organization,  # noqa: F811
) -> None:
    from tests.billing.stripe_helpers import organization_make

    other = organization_make("Other")
    deliver(fake, fake.send_event("customer.subscription.created", subscribed(fake, other), deliver=False))
    assert billing_account_for(other).plan.key == "team"
    assert billing_account_for(payer).stripe_subscription_id == ""
    assert changes(payer) == 0


@pytest.mark.django_db
def test_checkout_completed_links_the_customer_and_subscription(
    fake: FakeStripe,  # noqa: F811
    payer: Organization,  # noqa: F811
) -> None:
    session = {
        "id": "cs_test_1",
        "object": "checkout.session",
        "mode": "subscription",
        "status": "complete",
        "client_reference_id": str(payer.pk),
        "customer": "cus_from_checkout",
        "subscription": "sub_from_checkout",
        "metadata": {"organization_id": str(payer.pk), "plan": "team"},
    }
    assert deliver(fake, fake.send_event("checkout.session.completed", session, deliver=False)).startswith(
        "linked"
    )
    account = billing_account_for(payer)
    assert (account.stripe_customer_id, account.stripe_subscription_id) == (
        "cus_from_checkout",
        "sub_from_checkout",
    )


@pytest.mark.django_db
def test_invoices_are_mirrored_and_a_late_draft_does_not_replace_paid(
    fake: FakeStripe,  # noqa: F811
    payer: Organization,  # noqa: F811
) -> None:
    subscription = subscribed(fake, payer)
    invoice = fake.get("invoice", subscription["latest_invoice"])
    now = int(time.time())
    deliver(fake, fake.send_event("invoice.paid", invoice, created=now, deliver=False))
    draft = {**invoice, "status": "draft", "amount_paid": 0}
    assert deliver(fake, fake.send_event("invoice.created", draft, created=now, deliver=False)).startswith(
        "ignored"
    )
    assert deliver(
        fake, fake.send_event("invoice.created", draft, created=now - 2, deliver=False)
    ).startswith("ignored")
    mirrored = Invoice.objects.get(stripe_invoice_id=invoice["id"])
    assert mirrored.organization_id == payer.pk
    assert (mirrored.status, str(mirrored.total), str(mirrored.amount_paid)) == ("paid", "49.00", "49.00")
    assert mirrored.hosted_invoice_url == invoice["hosted_invoice_url"]


@pytest.mark.django_db
def test_an_unpaid_subscription_does_not_grant_its_plan(
    fake: FakeStripe,  # noqa: F811
    payer: Organization,  # noqa: F811
) -> None:
    subscription = subscribed(fake, payer, plan="team")
    before = billing_account_for(payer).plan.key
    assert before != "team"
    now = int(time.time())
    unpaid = {**subscription, "status": "incomplete"}
    deliver(fake, fake.send_event("customer.subscription.created", unpaid, created=now, deliver=False))
    account = billing_account_for(payer)
    assert (account.plan.key, account.status) == (before, BillingAccount.Status.INCOMPLETE)
    deliver(
        fake, fake.send_event("customer.subscription.updated", subscription, created=now + 1, deliver=False)
    )
    assert billing_account_for(payer).plan.key == "team"


@pytest.mark.django_db
def test_metadata_naming_an_organization_that_pays_as_another_customer_is_ignored(
    fake: FakeStripe,  # noqa: F811
    payer: Organization,  # noqa: F811
) -> None:
    subscribed(fake, payer)  # the payer is a customer of its own
    stranger = {
        "id": "sub_stranger",
        "object": "subscription",
        "customer": "cus_someone_else",
        "status": "active",
        "cancel_at_period_end": False,
        "items": {
            "object": "list",
            "data": [{"id": "si_s", "price": {"id": "price_s", "lookup_key": "team"}}],
        },
        "metadata": {"organization_id": str(payer.pk)},
    }
    outcome = deliver(fake, fake.send_event("customer.subscription.created", stranger, deliver=False))
    assert outcome == "ignored: no organization has customer cus_someone_else"
    assert billing_account_for(payer).stripe_subscription_id == ""
