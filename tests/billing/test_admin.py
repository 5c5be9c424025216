"""Billing in the back office: staff make a custom plan for one organization, edit and
archive plans, put an organization on a plan with overrides of its limits and features
(refused on the form when its usage does not fit), and read usage per organization.
People who are not staff get the admin's login page."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client

from apps.accounts.models import User
from apps.billing.ledger import usage_record
from apps.billing.models import BillingAccount, Plan
from apps.billing.plans import billing_account_for
from apps.billing.quotas import organization_limits
from apps.tenancy.models import AuditEvent, Membership
from tests.conftest import World, client_for
from tests.factories import PASSWORD, make_user

pytestmark = pytest.mark.django_db
PLANS = "/admin/billing/plan/"
ACCOUNTS = "/admin/billing/billingaccount/"


@pytest.fixture
def back_office() -> Client:
    staff = User.objects.create_user("sam-billing@agentyard.test", PASSWORD, is_staff=True, is_superuser=True)
    return client_for(staff)


def _plan_form(**fields: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "key": "alpha-enterprise",
        "name": "Alpha enterprise",
        "kind": "custom",
        "description": "Negotiated",
        "monthly_fee": "1500.00",
        "features": ["core_environment", "git", "sso"],
        "limits": '{"members": 500, "monthly_tokens": null}',
        "included": '{"llm_input_tokens": 100000000}',
        "unit_prices": '{"sandbox_seconds": "0.00002"}',
        "stripe_price_id": "",
        "organization": "",
        "position": "100",
    }
    values.update(fields)
    return values


def test_staff_make_a_custom_plan_for_one_organization(world: World, back_office: Client) -> None:
    response = back_office.post(f"{PLANS}add/", _plan_form(organization=world.alpha.pk))
    assert response.status_code == 302, response.content.decode()[-3000:]
    plan = Plan.objects.get(key="alpha-enterprise")
    assert plan.organization == world.alpha
    assert plan.public is False
    assert plan.features == ["core_environment", "git", "sso"]
    assert plan.limits == {"members": 500, "monthly_tokens": None}
    assert plan.monthly_fee == Decimal("1500.00")
    assert AuditEvent.objects.filter(action="admin.add", organization=world.alpha).exists()
    # Offered to Alpha on its billing page, not to Beta.
    assert "Alpha enterprise" in client_for(world.alice, world.alpha).get("/billing/").content.decode()
    assert "Alpha enterprise" not in client_for(world.bob, world.beta).get("/billing/").content.decode()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"limits": '{"seats": 5}'}, "Unknown limit"),
        ({"limits": '{"members": -1}'}, "whole number from 0"),
        ({"limits": "[1]"}, "JSON object"),
        ({"unit_prices": '{"gpu_hours": 1}'}, "Unknown usage kind"),
        ({"included": '{"sandbox_seconds": "lots"}'}, "must be a number"),
        ({"monthly_fee": "-1"}, "cannot be negative"),
        ({"public": "on"}, "not public"),
    ],
)
def test_a_bad_plan_is_refused_on_the_form(
    world: World, back_office: Client, fields: dict[str, Any], message: str
) -> None:
    response = back_office.post(f"{PLANS}add/", _plan_form(organization=world.alpha.pk, **fields))
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not Plan.objects.filter(key="alpha-enterprise").exists()


def test_staff_archive_a_plan_and_nobody_can_choose_it(world: World, back_office: Client) -> None:
    team = Plan.objects.get(key="team")
    response = back_office.post(PLANS, {"action": "archive_selected", "_selected_action": [team.pk]})
    assert response.status_code == 302
    assert Plan.objects.get(key="team").archived is True
    page = client_for(world.alice, world.alpha).get("/billing/").content.decode()
    assert 'data-plan="team"' not in page
    assert (
        client_for(world.alice, world.alpha).post("/billing/checkout/", {"plan": "team"}).status_code == 400
    )
    # Plans are archived, never deleted: accounts keep theirs.
    assert back_office.get(f"{PLANS}{team.pk}/delete/").status_code == 403


def test_staff_change_an_organizations_plan_and_overrides(world: World, back_office: Client) -> None:
    account = billing_account_for(world.alpha)
    url = f"{ACCOUNTS}{account.pk}/change/"
    assert back_office.get(url).status_code == 200
    free = Plan.objects.get(key="free")
    response = back_office.post(
        url,
        {
            "plan": free.pk,
            "limit_overrides": '{"members": 10, "concurrent_sandboxes": null}',
            "feature_overrides": '{"sso": true}',
        },
    )
    assert response.status_code == 302, response.content.decode()[-3000:]
    account = BillingAccount.objects.get(pk=account.pk)
    assert account.plan.key == "free"
    assert account.limit_overrides == {"members": 10, "concurrent_sandboxes": None}
    assert account.feature_overrides == {"sso": True}
    assert organization_limits(world.alpha)["members"] == 10
    assert organization_limits(world.alpha)["concurrent_sandboxes"] is None
    assert AuditEvent.objects.filter(action="billing.overrides_changed", organization=world.alpha).exists()
    assert AuditEvent.objects.filter(action="billing.plan_changed", organization=world.alpha).exists()
    page = client_for(world.alice, world.alpha).get("/billing/").content.decode()
    assert 'data-testid="plan-name">Free<' in page


def test_a_plan_the_usage_does_not_fit_is_refused_naming_what_to_reduce(
    world: World, back_office: Client
) -> None:
    for index in range(2):
        Membership.objects.create(user=make_user(f"bo-extra{index}@alpha.test"), organization=world.alpha)
    account = billing_account_for(world.alpha)
    response = back_office.post(
        f"{ACCOUNTS}{account.pk}/change/",
        {"plan": Plan.objects.get(key="free").pk, "limit_overrides": "{}", "feature_overrides": "{}"},
    )
    assert response.status_code == 200
    assert "The Free plan allows 3 members; Alpha has 4. Remove 1 member first." in response.content.decode()
    assert BillingAccount.objects.get(pk=account.pk).plan.key == "business"
    # An override that makes room lets the same plan through.
    response = back_office.post(
        f"{ACCOUNTS}{account.pk}/change/",
        {
            "plan": Plan.objects.get(key="free").pk,
            "limit_overrides": '{"members": 5}',
            "feature_overrides": "{}",
        },
    )
    assert response.status_code == 302
    assert BillingAccount.objects.get(pk=account.pk).plan.key == "free"


def test_bad_overrides_are_refused_on_the_form(world: World, back_office: Client) -> None:
    account = billing_account_for(world.alpha)
    plan = account.plan.pk
    for overrides, message in [
        ({"limit_overrides": '{"members": "many"}', "feature_overrides": "{}"}, "whole number"),
        ({"limit_overrides": "{}", "feature_overrides": '{"teleport": true}'}, "Unknown feature"),
        ({"limit_overrides": "{}", "feature_overrides": '{"sso": "yes"}'}, "true or false"),
    ]:
        response = back_office.post(f"{ACCOUNTS}{account.pk}/change/", {"plan": plan, **overrides})
        assert response.status_code == 200
        assert message in response.content.decode()
    assert BillingAccount.objects.get(pk=account.pk).limit_overrides == {}


def test_usage_per_organization_is_listed_read_only(world: World, back_office: Client) -> None:
    usage_record(organization_id=world.alpha.pk, kind="sandbox_seconds", quantity=3600,
                 source_type="workspace", source_id="7", unit_price=Decimal("0.00003"),
                 idempotency_key=f"bo-{uuid.uuid4().hex}")  # fmt: skip
    usage_record(organization_id=world.beta.pk, kind="llm_input_tokens", quantity=50, model="beta-model",
                 source_type="user", idempotency_key=f"bo-{uuid.uuid4().hex}")  # fmt: skip
    page = back_office.get("/admin/billing/usagedaily/", {"q": "alpha"}).content.decode()
    assert "sandbox_seconds" in page
    assert "$0.11" in page
    assert "beta-model" not in page
    assert back_office.get("/admin/billing/usagedaily/add/").status_code == 403
    account = billing_account_for(world.alpha)
    assert (
        "sandbox_seconds: 3,600.00 second = $0.11"
        in back_office.get(f"{ACCOUNTS}{account.pk}/change/").content.decode()
    )
    for url in ["/admin/billing/invoice/", "/admin/billing/stripeevent/", "/admin/billing/usagereport/",
                "/admin/billing/quotaalert/", ACCOUNTS, PLANS, f"{PLANS}add/"]:  # fmt: skip
        assert back_office.get(url).status_code == 200, url


def test_people_who_are_not_staff_get_the_admin_login(world: World) -> None:
    for user in [None, world.alice, world.olga]:
        for url in [PLANS, ACCOUNTS, "/admin/billing/usagedaily/"]:
            response = client_for(user).get(url)
            assert response.status_code == 302, (user, url)
            assert response["Location"].startswith("/admin/login/")
