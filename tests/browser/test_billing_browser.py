"""Billing in a real browser: an owner subscribes end to end (Billing -> upgrade to Team ->
the fake Stripe's hosted Checkout page -> "Pay and subscribe" -> back on the billing page
on the Team plan: the fake's signed webhooks reach the live server's public webhook URL
and the real Celery worker applies them), sets a budget and sees a bad one refused; a
member sees the page with its controls disabled."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from playwright.sync_api import expect

from apps.billing.models import BillingAccount, Invoice, Plan, StripeEvent
from apps.billing.plans import billing_account_for
from apps.llm.models import Budget
from apps.tenancy.models import AuditEvent
from tests.billing.stripe_helpers import catalogue_prices
from tests.conftest import LiveServer, World, wait_for
from tests.fakes.stripe_server import FakeStripe, stripe_fake  # noqa: F401 (a fixture)

pytestmark = pytest.mark.browser


def _account_reset(account: BillingAccount, plan_key: str) -> None:
    BillingAccount.objects.filter(pk=account.pk).update(
        plan=Plan.objects.get(key=plan_key),
        status=BillingAccount.Status.ACTIVE,
        stripe_customer_id="",
        stripe_subscription_id="",
        subscription_version=0,
        current_period_start=None,
        current_period_end=None,
        cancel_at_period_end=False,
        alert_thresholds=[50, 80, 100],
    )


@pytest.fixture
def alpha_on_free(live_db: World) -> Iterator[BillingAccount]:
    """Alpha on the Free plan with no Stripe customer; afterwards back on the test default
    (Business), its Stripe rows, budget and billing audit events gone."""
    account = billing_account_for(live_db.alpha)
    _account_reset(account, "free")
    yield account
    customer = BillingAccount.objects.get(pk=account.pk).stripe_customer_id
    if customer:
        StripeEvent.objects.filter(payload__data__object__customer=customer).delete()
    Invoice.objects.filter(organization=live_db.alpha).delete()
    Budget.objects.filter(organization=live_db.alpha).delete()
    _account_reset(account, "business")
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {AuditEvent._meta.db_table} WHERE organization_id = %s"  # noqa: S608 (a model's table)
            " AND (action LIKE 'billing.%%' OR action LIKE 'llm.budget%%')",
            [live_db.alpha.pk],
        )


def _log_in(page: Any, server: LiveServer, email: str, password: str) -> None:
    page.goto(server.url(path="/login/"))
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Alpha")


def test_an_owner_subscribes_to_team_through_checkout(
    stripe_fake: FakeStripe,  # noqa: F811 (first: the worker started below inherits its settings)
    celery_worker: Any,
    asgi_server: LiveServer,
    page: Any,
    world: World,
    alpha_on_free: BillingAccount,
) -> None:
    catalogue_prices(stripe_fake)
    stripe_fake.clear_failures()
    stripe_fake.webhook_url = asgi_server.url(None, "/billing/stripe/webhook/")
    try:
        _log_in(page, asgi_server, world.alice.email, world.password)
        page.get_by_role("navigation", name="Organization").get_by_role("link", name="Billing").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Billing")
        expect(page.get_by_test_id("plan-name")).to_have_text("Free")
        members = page.locator('[data-testid="limit-row"][data-limit="members"]')
        expect(members.get_by_test_id("limit-used")).to_have_text("2")
        expect(members.get_by_test_id("limit-allowed")).to_have_text("3")

        page.locator('[data-testid="plan-card"][data-plan="team"]').get_by_role(
            "button", name="Upgrade to Team"
        ).click()
        # Stripe's hosted page (the fake's), with the Team plan's price on it.
        expect(page).to_have_url(re.compile(re.escape(f"{stripe_fake.origin}/checkout/")))
        expect(page.get_by_text("Agentyard Team 49.00 USD / month")).to_be_visible()
        page.get_by_role("button", name="Pay and subscribe").click()

        # Back on our pages: the worker applies the webhook, and the page moves on by itself.
        expect(page.get_by_test_id("plan-name")).to_have_text("Team", timeout=30_000)
        expect(page).to_have_url(asgi_server.url(world.alpha, "/billing/"))
        expect(page.get_by_text("Thank you: Alpha is now on the Team plan.")).to_be_visible()
        expect(page.get_by_test_id("plan-status")).to_have_text("Active")
        expect(members.get_by_test_id("limit-allowed")).to_have_text("25")
        expect(
            page.locator('[data-testid="plan-card"][data-plan="team"]').get_by_test_id("plan-current")
        ).to_be_visible()
        expect(page.get_by_role("button", name="Payment methods and invoices (Stripe)")).to_be_visible()
        account = BillingAccount.objects.get(pk=alpha_on_free.pk)
        assert account.plan.key == "team"
        assert account.stripe_subscription_id.startswith("sub_")
        assert account.current_period_end is not None
        # The first invoice, mirrored from invoice.paid, is listed with its link.
        wait_for(lambda: Invoice.objects.filter(organization=world.alpha, status="paid").exists(), timeout=30)
        page.reload()
        invoice = page.get_by_test_id("invoice-row")
        expect(invoice).to_have_count(1)
        expect(invoice).to_contain_text("$49.00")
        expect(invoice.get_by_role("link", name="View")).to_have_attribute(
            "href", re.compile(re.escape(f"{stripe_fake.origin}/invoice/"))
        )
    finally:
        stripe_fake.webhook_url = None


def test_an_owner_sets_a_budget_and_a_bad_one_is_refused(
    asgi_server: LiveServer, page: Any, world: World, alpha_on_free: BillingAccount
) -> None:
    _log_in(page, asgi_server, world.alice.email, world.password)
    page.goto(asgi_server.url(world.alpha, "/billing/"))
    form = page.get_by_test_id("budget-form")
    form.get_by_label("Monthly budget (USD)").fill("-20")
    form.get_by_role("button", name="Save budget").click()
    expect(page.get_by_text("The budget cannot be negative")).to_be_visible()
    assert not Budget.objects.filter(organization=world.alpha).exists()

    form = page.get_by_test_id("budget-form")
    form.get_by_label("Monthly budget (USD)").fill("250")
    form.get_by_label("Alert at (% of a limit or the budget)").fill("50, 90")
    form.get_by_role("button", name="Save budget").click()
    expect(page.get_by_test_id("budget-value")).to_have_text("$250.00")
    expect(page.get_by_test_id("alert-thresholds")).to_have_text("50%, 90%")
    assert Budget.objects.get(organization=world.alpha, scope="organization").limit_usd == 250


def test_a_member_sees_billing_but_cannot_change_it(
    asgi_server: LiveServer, page: Any, world: World, alpha_on_free: BillingAccount
) -> None:
    _log_in(page, asgi_server, world.amy.email, world.password)
    page.get_by_role("navigation", name="Organization").get_by_role("link", name="Billing").click()
    expect(page.get_by_test_id("plan-name")).to_have_text("Free")
    switch = page.locator('[data-testid="plan-card"][data-plan="team"]').get_by_role("button")
    expect(switch).to_be_disabled()
    expect(page.get_by_test_id("budget-form")).to_have_count(0)
    expect(
        page.get_by_text("Owners, admins and billing members change the plan and the budget.")
    ).to_be_visible()
