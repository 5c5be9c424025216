"""The billing page, as people use it: the plan, its limits with what is used, usage by day
and kind with its chart, cost by model, person and project, invoices, plan choice with a
downgrade refused when the usage does not fit, and the budget with its alert thresholds.
Everyone sees it; only owners, admins and billing members change anything; another
organization's usage never shows."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client, override_settings
from django.utils import timezone

from apps.billing.ledger import usage_record
from apps.billing.models import BillingAccount, Invoice, Plan, QuotaAlert
from apps.billing.plans import billing_account_for
from apps.llm.models import Budget
from apps.tenancy.models import Membership, Organization
from tests.billing.stripe_helpers import catalogue_prices, fake  # noqa: F401 (a fixture)
from tests.conftest import World, client_for
from tests.factories import make_user
from tests.fakes.stripe_server import FakeStripe, stripe_fake  # noqa: F401 (a fixture)

pytestmark = pytest.mark.django_db


def _client_with_role(world: World, role: str) -> Client:
    user = make_user(f"{role}-billing-{uuid.uuid4().hex[:6]}@alpha.test")
    Membership.objects.create(user=user, organization=world.alpha, role=role)
    return client_for(user, world.alpha)


def _rows(page: str, testid: str, attribute: str) -> list[str]:
    return re.findall(rf'data-testid="{testid}" data-{attribute}="([^"]*)"', page)


def _usage(organization: Organization, **fields: Any) -> None:
    values: dict[str, Any] = {
        "organization_id": organization.pk,
        "kind": "llm_input_tokens",
        "quantity": 1000,
        "source_type": "user",
        "idempotency_key": f"test-pages-{uuid.uuid4().hex}",
    }
    values.update(fields)
    assert usage_record(**values)


def _limit_cells(page: str, key: str) -> tuple[str, str]:
    row = re.search(rf'data-limit="{key}">(.*?)</tr>', page, re.S)
    assert row, key
    used = re.search(r'data-testid="limit-used">([^<]*)<', row.group(1))
    allowed = re.search(r'data-testid="limit-allowed">([^<]*)<', row.group(1))
    assert used
    assert allowed
    return used.group(1), allowed.group(1)


def _set_plan(organization: Organization, key: str) -> BillingAccount:
    account = billing_account_for(organization)
    account.plan = Plan.objects.get(key=key)
    account.save()
    return account


def test_the_owner_sees_the_plan_its_limits_and_what_is_used(world: World) -> None:
    _set_plan(world.alpha, "free")
    page = client_for(world.alice, world.alpha).get("/billing/").content.decode()
    assert 'data-testid="plan-name">Free<' in page
    assert 'data-testid="plan-status">Active<' in page
    # alice and amy: 2 of the Free plan's 3 members, shown as a bar at 66 %.
    assert _limit_cells(page, "members") == ("2", "3")
    assert re.search(r'data-limit="members">.*?<progress max="100" value="66"', page, re.S)
    assert _limit_cells(page, "concurrent_sandboxes") == ("0", "1")
    assert _limit_cells(page, "monthly_tokens") == ("0", "1,000,000")
    period = re.search(r'data-testid="plan-period"><time datetime="([\d-]+)"', page)
    assert period
    assert period.group(1) == timezone.now().date().replace(day=1).isoformat()


def test_staff_overrides_show_as_the_limit(world: World) -> None:
    account = _set_plan(world.alpha, "free")
    account.limit_overrides = {"members": 10, "workspaces": None}
    account.save()
    page = client_for(world.alice, world.alpha).get("/billing/").content.decode()
    assert _limit_cells(page, "members") == ("2", "10")
    assert _limit_cells(page, "workspaces") == ("0", "Unlimited")
    assert "changes the Agentyard team made" in page


def test_usage_by_day_kind_model_person_and_project_of_this_organization_only(world: World) -> None:
    today = timezone.now()
    _usage(world.alpha, kind="llm_input_tokens", quantity=2_000_000, model="gpt-4o-mini",
           user_id=world.alice.pk, source_type="agent_run", source_id=str(uuid.uuid4()),
           unit_price=Decimal("0.00000015"))  # fmt: skip
    _usage(world.alpha, kind="llm_output_tokens", quantity=100_000, model="gpt-4o-mini",
           user_id=world.amy.pk, unit_price=Decimal("0.0000006"),
           occurred_at=today - timedelta(days=2))  # fmt: skip
    _usage(world.alpha, kind="sandbox_seconds", quantity=7200, source_type="workspace", source_id="999999",
           unit_price=Decimal("0.00003"))  # fmt: skip
    _usage(world.beta, kind="llm_input_tokens", quantity=9_000_000, model="beta-secret-model",
           unit_price=Decimal("0.001"), user_id=world.bob.pk)  # fmt: skip

    page = client_for(world.amy, world.alpha).get("/billing/").content.decode()

    # 0.30 + 0.06 + 0.216 USD at list prices
    assert 'data-testid="usage-total">$0.58<' in page
    assert set(_rows(page, "kind-row", "kind")) == {
        "llm_input_tokens",
        "llm_output_tokens",
        "sandbox_seconds",
    }
    assert "7,200 second" in page
    bars = re.findall(r'data-testid="chart-bar" data-day="([\d-]+)" data-kind="([a-z_]+)"', page)
    assert (today.date().isoformat(), "llm_input_tokens") in bars
    assert ((today - timedelta(days=2)).date().isoformat(), "llm_output_tokens") in bars
    assert _rows(page, "model-row", "model") == ["gpt-4o-mini"]
    # alice's run 0.30, the sandbox (no person) 0.216, amy's call 0.06
    assert _rows(page, "user-row", "email") == ["alice@alpha.test", "", "amy@alpha.test"]
    projects = _rows(page, "project-row", "source")
    assert projects[0].startswith("agent_run:")  # 0.30 USD, the most
    assert projects[1] == "workspace:999999"
    assert "(deleted)" in page  # neither the run nor the workspace exists in Alpha's schema
    assert "beta-secret-model" not in page
    assert "bob@beta.test" not in page


def test_the_usage_filter_narrows_to_one_kind_and_refuses_nonsense(world: World) -> None:
    _usage(world.alpha, kind="sandbox_seconds", quantity=3600, source_type="workspace", source_id="1")
    _usage(world.alpha, kind="llm_input_tokens", quantity=10, model="gpt-4o-mini")
    client = client_for(world.alice, world.alpha)
    page = client.get("/billing/", {"kind": "sandbox_seconds", "days": "7"}).content.decode()
    assert _rows(page, "kind-row", "kind") == ["sandbox_seconds"]
    assert "Sandbox seconds per day" in page
    response = client.get("/billing/", {"days": "5", "kind": "gold"})
    assert response.status_code == 400
    assert "Choose 7, 30 or 90 days." in response.content.decode()
    assert "Choose a kind of usage from the list." in response.content.decode()


def test_invoices_are_listed_with_their_links(world: World) -> None:
    Invoice.objects.create(
        organization=world.alpha, stripe_invoice_id="in_alpha_1", number="ALPHA-0001", status="paid",
        total=Decimal("49.00"), amount_paid=Decimal("49.00"), created=timezone.now(),
        hosted_invoice_url="https://invoice.stripe.test/i/alpha1", invoice_pdf="https://invoice.stripe.test/alpha1.pdf",
    )  # fmt: skip
    Invoice.objects.create(
        organization=world.beta, stripe_invoice_id="in_beta_1", number="BETA-0001", status="open",
        total=Decimal("199.00"), created=timezone.now(),
    )  # fmt: skip
    page = client_for(world.amy, world.alpha).get("/billing/").content.decode()
    assert _rows(page, "invoice-row", "invoice") == ["ALPHA-0001"]
    assert "$49.00" in page
    assert 'href="https://invoice.stripe.test/i/alpha1"' in page
    assert "BETA-0001" not in page


def test_members_and_viewers_see_the_page_but_cannot_change_anything(world: World) -> None:
    _set_plan(world.alpha, "free")
    for role in (Membership.Role.MEMBER, Membership.Role.VIEWER):
        client = _client_with_role(world, role)
        page = client.get("/billing/").content.decode()
        assert 'data-testid="plan-name">Free<' in page
        assert 'action="/billing/checkout/"' not in page
        assert 'data-testid="budget-form"' not in page
        assert "disabled" in page
        assert client.post("/billing/checkout/", {"plan": "payg"}).status_code == 403
        assert (
            client.post("/billing/budget/", {"budget_usd": "5", "alert_thresholds": "50"}).status_code == 403
        )
        assert client.post("/billing/portal/").status_code == 403
    assert billing_account_for(world.alpha).plan.key == "free"
    assert not Budget.objects.filter(organization=world.alpha).exists()


def test_the_billing_role_may_change_the_budget(world: World) -> None:
    client = _client_with_role(world, Membership.Role.BILLING)
    response = client.post("/billing/budget/", {"budget_usd": "120", "alert_thresholds": "80, 100"})
    assert response.status_code == 302
    assert Budget.objects.get(organization=world.alpha, scope="organization").limit_usd == Decimal("120")


def test_an_owner_sets_the_budget_and_alert_thresholds(world: World) -> None:
    client = client_for(world.alice, world.alpha)
    response = client.post("/billing/budget/", {"budget_usd": "$1,250.50", "alert_thresholds": "90%, 50, 75"})
    assert response.status_code == 302
    budget = Budget.objects.get(organization=world.alpha, scope="organization", period="month")
    assert budget.limit_usd == Decimal("1250.50")
    assert billing_account_for(world.alpha).alert_thresholds == [50, 75, 90]
    page = client.get("/billing/").content.decode()
    assert 'data-testid="budget-value">$1,250.50<' in page
    assert 'data-testid="alert-thresholds">50%, 75%, 90%<' in page
    assert "Saved: a monthly budget of $1,250.50" in page

    # Empty: no budget any more.
    assert client.post("/billing/budget/", {"budget_usd": "", "alert_thresholds": "50"}).status_code == 302
    assert not Budget.objects.filter(organization=world.alpha, scope="organization").exists()


@pytest.mark.parametrize(
    ("budget", "thresholds", "message"),
    [
        ("-5", "50", "The budget cannot be negative"),
        ("lots", "50", "&#x27;lots&#x27; is not an amount"),
        ("NaN", "50", "Enter the budget in US dollars"),
        ("10", "50, 150", "150% is out of range"),
        ("10", "half", "&#x27;half&#x27; is not a whole percentage"),
        ("10", "", "Give one to five alert thresholds"),
    ],
)
def test_a_bad_budget_or_threshold_is_a_400_on_its_field_and_changes_nothing(
    world: World, budget: str, thresholds: str, message: str
) -> None:
    client = client_for(world.alice, world.alpha)
    before = billing_account_for(world.alpha).alert_thresholds
    response = client.post("/billing/budget/", {"budget_usd": budget, "alert_thresholds": thresholds})
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not Budget.objects.filter(organization=world.alpha).exists()
    assert billing_account_for(world.alpha).alert_thresholds == before


def test_a_downgrade_below_current_usage_is_refused_naming_what_to_reduce(world: World) -> None:
    _set_plan(world.alpha, "business")
    for index in range(2):  # 4 members; Free allows 3
        Membership.objects.create(user=make_user(f"extra{index}@alpha.test"), organization=world.alpha)
    response = client_for(world.alice, world.alpha).post("/billing/checkout/", {"plan": "free"})
    assert response.status_code == 409
    error = re.search(r'data-testid="plan-error">([^<]*)<', response.content.decode())
    assert error
    assert "The Free plan allows 3 members; Alpha has 4. Remove 1 member first." in error.group(1)
    assert billing_account_for(world.alpha).plan.key == "business"


def test_a_free_plan_that_fits_changes_at_once(world: World) -> None:
    _set_plan(world.alpha, "business")
    client = client_for(world.alice, world.alpha)
    response = client.post("/billing/checkout/", {"plan": "free"})  # 2 members of 3, nothing running
    assert response.status_code == 302
    assert response["Location"] == "/billing/"
    assert billing_account_for(world.alpha).plan.key == "free"
    assert "Alpha is now on the Free plan." in client.get("/billing/").content.decode()


def test_plans_that_cannot_be_chosen_are_refused(world: World) -> None:
    Plan.objects.create(
        key="beta-special", name="Beta special", kind="custom", public=False, organization=world.beta
    )
    Plan.objects.create(key="old-team", name="Old team", kind="subscription", archived=True)
    client = client_for(world.alice, world.alpha)
    page = client.get("/billing/").content.decode()
    assert "Beta special" not in page
    assert "Old team" not in page
    for key, status in [("beta-special", 400), ("old-team", 400), ("nope", 400), ("", 400)]:
        response = client.post("/billing/checkout/", {"plan": key})
        assert response.status_code == status, key
        assert 'data-testid="plan-error"' in response.content.decode()
    assert billing_account_for(world.alpha).plan.key == "business"


def test_an_organizations_own_custom_plan_is_offered_to_it(world: World) -> None:
    Plan.objects.create(
        key="alpha-deal", name="Alpha deal", kind="custom", public=False, organization=world.alpha,
        limits={"members": 100}, position=5,
    )  # fmt: skip
    client = client_for(world.alice, world.alpha)
    assert "alpha-deal" in _rows(client.get("/billing/").content.decode(), "plan-card", "plan")
    assert client.post("/billing/checkout/", {"plan": "alpha-deal"}).status_code == 302
    assert billing_account_for(world.alpha).plan.key == "alpha-deal"
    assert "alpha-deal" not in client_for(world.bob, world.beta).get("/billing/").content.decode()


def test_without_stripe_paid_plans_cannot_be_chosen_and_the_page_says_why(world: World) -> None:
    client = client_for(world.alice, world.alpha)
    with override_settings(STRIPE_API_KEY=""):
        page = client.get("/billing/").content.decode()
        assert 'data-testid="payments-not-set-up"' in page
        team = re.search(r'data-plan="team".*?</article>', page, re.S)
        assert team
        assert "disabled" in team.group(0)
        assert 'action="/billing/checkout/"' not in team.group(0)
        response = client.post("/billing/checkout/", {"plan": "team"})
    assert response.status_code == 503
    assert "Payments are not set up on this server" in response.content.decode()
    assert billing_account_for(world.alpha).plan.key == "business"


def test_a_paid_plan_goes_to_stripes_checkout_and_the_portal_opens(world: World, fake: FakeStripe) -> None:  # noqa: F811
    _set_plan(world.alpha, "free")
    catalogue_prices(fake)
    client = client_for(world.alice, world.alpha)
    response = client.post("/billing/checkout/", {"plan": "team"})
    assert response.status_code == 302
    assert response["Location"].startswith(f"{fake.origin}/checkout/")
    assert billing_account_for(world.alpha).plan.key == "free"  # until Stripe's webhook says so
    assert billing_account_for(world.alpha).stripe_customer_id.startswith("cus_")
    response = client.post("/billing/portal/")
    assert response.status_code == 302
    assert response["Location"].startswith(f"{fake.origin}/portal/")


def test_coming_back_from_checkout(world: World) -> None:
    _set_plan(world.alpha, "free")
    client = client_for(world.alice, world.alpha)
    # Stripe's webhook has not been applied yet: the page says so and looks again.
    pending = client.get("/billing/checkout/success/", {"plan": "team", "session_id": "cs_1"})
    assert pending.status_code == 200
    assert 'data-testid="checkout-pending"' in pending.content.decode()
    assert 'http-equiv="refresh"' in pending.content.decode()
    _set_plan(world.alpha, "team")
    applied = client.get("/billing/checkout/success/", {"plan": "team", "session_id": "cs_1"})
    assert applied.status_code == 302
    assert applied["Location"] == "/billing/"
    assert "Thank you: Alpha is now on the Team plan." in client.get("/billing/").content.decode()
    cancelled = client.get("/billing/checkout/cancel/").content.decode()
    assert "Nothing was charged; Alpha stays on the <strong>Team</strong> plan." in cancelled


def test_this_months_alerts_are_listed(world: World) -> None:
    QuotaAlert.objects.create(organization=world.alpha, limit="members", threshold=80,
                              period_start=timezone.now().date().replace(day=1))  # fmt: skip
    QuotaAlert.objects.create(organization=world.beta, limit="workspaces", threshold=100,
                              period_start=timezone.now().date().replace(day=1))  # fmt: skip
    page = client_for(world.amy, world.alpha).get("/billing/").content.decode()
    assert _rows(page, "alert", "limit") == ["members"]
    assert "<strong>Members</strong> reached 80%" in page
