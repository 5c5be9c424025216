"""Billing in a real browser: an owner subscribes end to end (Billing -> upgrade to Team ->
the fake Stripe's hosted Checkout page -> "Pay and subscribe" -> back on the billing page
on the Team plan: the fake's signed webhooks reach the live server's public webhook URL
and the real Celery worker applies them), sets a budget and sees a bad one refused; a
member sees the page with its controls disabled."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal
from typing import Any, TypeVar

import pytest
from django.db import connection
from django.utils import timezone
from playwright.sync_api import expect

from apps.accounts.models import User
from apps.billing.ledger import usage_record
from apps.billing.models import BillingAccount, Invoice, Plan, StripeEvent
from apps.billing.plans import billing_account_for
from apps.llm.models import Budget
from apps.tenancy import services as tenancy_services
from apps.tenancy.models import AuditEvent, Organization
from tests.billing.stripe_helpers import catalogue_prices
from tests.conftest import ARTIFACTS, LiveServer, World, wait_for
from tests.factories import make_user
from tests.fakes.stripe_server import FakeStripe, stripe_fake  # noqa: F401 (a fixture)

pytestmark = pytest.mark.browser
T = TypeVar("T")


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


def _off_the_loop(function: Callable[[], T]) -> T:
    """Run `function` in a thread of its own: Playwright keeps an event loop in this one,
    where provisioning's notices (async_to_sync) may not run."""

    def call() -> T:
        try:
            return function()
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(call).result()


def _chart_org_make() -> tuple[Organization, User]:
    for leftover in Organization.objects.filter(slug="chartco"):
        tenancy_services.organization_delete(organization=leftover)
    User.objects.filter(email__endswith="@chartco.test").delete()
    owner = make_user("owner@chartco.test", "Chart Owner")
    organization = tenancy_services.organization_create(
        name="Chartco", slug="chartco", created_by=owner, provision_async=False
    )
    organization = tenancy_services.organization_provision(organization_id=organization.pk)
    now = timezone.now()
    for offset, kind, quantity, price, model in [
        (0, "llm_input_tokens", 2_000_000, "0.00000015", "gpt-4o-mini"),
        (0, "sandbox_seconds", 7200, "0.00003", ""),
        (1, "llm_output_tokens", 300_000, "0.0000006", "gpt-4o-mini"),
        (3, "llm_input_tokens", 1_000_000, "0.0000025", "claude-3-5-haiku"),
        (5, "storage_gb_hours", 240, "0.0001", ""),
    ]:
        usage_record(
            organization_id=organization.pk, kind=kind, quantity=quantity, unit_price=Decimal(price),
            model=model, source_type="user", user_id=owner.pk, occurred_at=now - timedelta(days=offset),
            idempotency_key=f"chartco-{organization.pk}-{offset}-{kind}-{model}",
        )  # fmt: skip
    return organization, owner


def _chart_org_drop(organization: Organization) -> None:
    organization_id = organization.pk
    tenancy_services.organization_delete(organization=organization)
    User.objects.filter(email__endswith="@chartco.test").delete()
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {AuditEvent._meta.db_table} WHERE organization_id = %s",  # noqa: S608 (a model's table)
            [organization_id],
        )


@pytest.fixture
def chart_org(live_db: World) -> Iterator[tuple[Organization, User]]:
    """An organization of its own with a week of usage (ledger rows are append-only: they go
    only with their organization, so the shared world's stay untouched)."""
    organization, owner = _off_the_loop(_chart_org_make)
    try:
        yield organization, owner
    finally:
        _off_the_loop(lambda: _chart_org_drop(organization))


def test_usage_chart_by_day_and_kind_and_the_cost_tables(
    asgi_server: LiveServer, page: Any, world: World, chart_org: tuple[Organization, User]
) -> None:
    organization, owner = chart_org
    page.goto(asgi_server.url(path="/login/"))
    page.get_by_label("Email").fill(owner.email)
    page.get_by_label("Password").fill(world.password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Chartco")
    page.get_by_role("navigation", name="Organization").get_by_role("link", name="Billing").click()

    chart = page.get_by_test_id("usage-chart")
    expect(chart.locator("svg")).to_be_visible()
    expect(page.get_by_test_id("chart-bar")).to_have_count(5)
    expect(page.get_by_test_id("legend-item")).to_have_text(
        ["LLM input tokens", "LLM output tokens", "Sandbox seconds", "Storage GB-hours"]
    )
    # 0.30 + 0.216 + 0.18 + 2.50 + 0.024 USD
    expect(page.get_by_test_id("usage-total")).to_have_text("$3.22")
    # Three days ago, claude's 2.50 USD is the peak (the full plot height); today's input 0.30.
    inputs = page.locator('[data-testid="chart-bar"][data-kind="llm_input_tokens"]')
    assert float(inputs.first.get_attribute("height") or 0) == 220
    assert float(inputs.last.get_attribute("height") or 0) == pytest.approx(220 * 0.30 / 2.50)
    expect(page.get_by_test_id("model-row")).to_have_count(2)
    expect(page.locator('[data-testid="model-row"]').first).to_have_attribute(
        "data-model", "claude-3-5-haiku"
    )
    expect(page.get_by_test_id("user-row")).to_have_attribute("data-email", owner.email)
    expect(page.get_by_text("gpt-4o-mini")).not_to_have_count(0)
    page.screenshot(path=str(ARTIFACTS / "screenshots" / "billing_usage_page.png"), full_page=True)

    page.get_by_label("Kind", exact=True).select_option("sandbox_seconds")
    page.get_by_role("button", name="Show").click()
    expect(page).to_have_url(f"{asgi_server.url(organization, '/billing/')}?days=30&kind=sandbox_seconds")
    expect(page.get_by_text("Sandbox seconds per day", exact=True)).to_be_visible()
    expect(page.get_by_test_id("chart-bar")).to_have_count(1)
    expect(page.get_by_test_id("usage-total")).to_have_text("$0.22")
