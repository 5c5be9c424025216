"""/api/v1/billing/ as clients use it, with a browser session or an API key: the account
(plan, limits with what is used, budget), usage with filters, invoices, plans, the budget
(a negative or non-numeric one is a 400 naming the field, and nothing changes), and
Checkout (a URL to Stripe's page from the fake Stripe; a downgrade the usage does not fit
is a 409 naming what to reduce). Scopes and roles decide who may change what; another
organization's usage, invoices and custom plans never show."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from apps.billing.ledger import usage_record
from apps.billing.models import Invoice, Plan
from apps.billing.plans import billing_account_for
from apps.llm.models import Budget
from apps.tenancy.models import Membership, Organization
from tests.api.conftest import key_client, new_key
from tests.billing.stripe_helpers import catalogue_prices, fake  # noqa: F401 (a fixture)
from tests.conftest import World, client_for
from tests.factories import make_user
from tests.fakes.stripe_server import FakeStripe, stripe_fake  # noqa: F401 (a fixture)

pytestmark = pytest.mark.django_db
API = "/api/v1/billing"


def _put(client: Client, path: str, body: Any) -> Any:
    return client.put(path, json.dumps(body), content_type="application/json")


def _post(client: Client, path: str, body: Any) -> Any:
    return client.post(path, json.dumps(body), content_type="application/json")


def _set_plan(organization: Organization, key: str) -> None:
    account = billing_account_for(organization)
    account.plan = Plan.objects.get(key=key)
    account.save()


def _usage(organization: Organization, **fields: Any) -> None:
    values: dict[str, Any] = {
        "organization_id": organization.pk,
        "kind": "llm_input_tokens",
        "quantity": 1000,
        "source_type": "user",
        "idempotency_key": f"test-api-{uuid.uuid4().hex}",
    }
    values.update(fields)
    assert usage_record(**values)


def test_the_account_shows_the_plan_limits_with_usage_and_the_budget(world: World) -> None:
    from django_tenants.utils import schema_context

    from apps.workspaces.models import Workspace

    _set_plan(world.alpha, "team")
    with schema_context(world.alpha.schema_name):
        Workspace.objects.create(name="billing-api-sample", state=Workspace.State.STOPPED, disk_mb=3072)
    _usage(world.alpha, kind="sandbox_seconds", quantity=5400, source_type="workspace", source_id="1",
           unit_price=Decimal("0.00003"))  # fmt: skip
    _, raw = new_key(world, ["billing:read"])
    body = key_client(raw).get(API).json()
    assert body["plan"]["key"] == "team"
    assert body["plan"]["monthly_fee"] == "49.00"
    assert body["status"] == "active"
    assert body["subscribed"] is False
    limits = {limit["key"]: limit for limit in body["limits"]}
    assert limits["members"] == {
        "key": "members",
        "label": "Members",
        "used": 2.0,
        "limit": 25.0,
        "percent": 8,
    }
    assert limits["monthly_tokens"]["limit"] == 50_000_000
    assert (limits["workspaces"]["used"], limits["workspaces"]["limit"]) == (1.0, 50.0)
    assert limits["storage_gb"]["used"] == 3.0
    assert limits["sandbox_hours"]["used"] == 1.5
    assert body["period_usage"] == [
        {"kind": "sandbox_seconds", "unit": "second", "quantity": "5400.000000", "amount_usd": "0.16200000"}
    ]
    assert Decimal(body["period_cost_usd"]) == Decimal("0.162")
    assert body["budget_usd"] is None
    assert body["alert_thresholds"] == [50, 80, 100]


def test_usage_by_day_kind_model_person_and_project_with_filters(world: World) -> None:
    run_id = str(uuid.uuid4())
    _usage(world.alpha, quantity=1_000_000, model="gpt-4o-mini", unit_price=Decimal("0.00000015"),
           source_type="agent_run", source_id=run_id, user_id=world.alice.pk)  # fmt: skip
    _usage(world.alpha, kind="sandbox_seconds", quantity=3600, unit_price=Decimal("0.00003"),
           source_type="workspace", source_id="42")  # fmt: skip
    _usage(world.beta, quantity=5, model="beta-secret-model", unit_price=Decimal("1"))
    client = client_for(world.amy, world.alpha)

    body = client.get(f"{API}/usage").json()
    assert body["days"] == 30
    assert Decimal(body["total_usd"]) == Decimal("0.258")
    assert {(row["kind"], row["unit"]) for row in body["by_kind"]} == {
        ("llm_input_tokens", "token"),
        ("sandbox_seconds", "second"),
    }
    assert [row["model"] for row in body["by_model"]] == ["gpt-4o-mini"]
    assert Decimal(body["by_model"][0]["input_tokens"]) == 1_000_000
    assert [row["email"] for row in body["by_user"]] == ["alice@alpha.test", ""]
    assert [(row["source_type"], row["source_id"]) for row in body["by_project"]] == [
        ("agent_run", run_id),
        ("workspace", "42"),
    ]
    assert body["by_day"][0]["day"] == timezone.now().date().isoformat()
    assert "beta-secret-model" not in json.dumps(body)

    only_sandbox = client.get(f"{API}/usage", {"kind": "sandbox_seconds", "days": "7"}).json()
    assert [row["kind"] for row in only_sandbox["by_kind"]] == ["sandbox_seconds"]
    assert only_sandbox["by_model"] == []
    one_run = client.get(f"{API}/usage", {"source_type": "agent_run", "source_id": run_id}).json()
    assert Decimal(one_run["total_usd"]) == Decimal("0.15")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"days": "0"}, "days"),
        ({"days": "many"}, "days"),
        ({"kind": "gold"}, "kind"),
        ({"source_type": "planet"}, "source_type"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_usage_filters_are_a_400_naming_the_parameter(
    world: World, query: dict[str, str], field: str
) -> None:
    response = client_for(world.alice, world.alpha).get(f"{API}/usage", query)
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]


def test_invoices_and_plans_are_the_organizations_own(world: World) -> None:
    Invoice.objects.create(organization=world.alpha, stripe_invoice_id="in_a", number="A-1", status="paid",
                           total=Decimal("49"), created=timezone.now(),
                           hosted_invoice_url="https://pay.test/a")  # fmt: skip
    Invoice.objects.create(organization=world.beta, stripe_invoice_id="in_b", number="B-1", status="paid",
                           total=Decimal("9"), created=timezone.now())  # fmt: skip
    Plan.objects.create(
        key="alpha-deal", name="Alpha deal", kind="custom", public=False, organization=world.alpha
    )
    Plan.objects.create(
        key="beta-deal", name="Beta deal", kind="custom", public=False, organization=world.beta
    )
    client = client_for(world.amy, world.alpha)
    invoices = client.get(f"{API}/invoices").json()
    assert [(row["number"], row["total"], row["hosted_invoice_url"]) for row in invoices] == [
        ("A-1", "49.00", "https://pay.test/a")
    ]
    plans = {row["key"]: row for row in client.get(f"{API}/plans").json()}
    assert {"free", "payg", "team", "business", "reserved", "alpha-deal"} <= set(plans)
    assert "beta-deal" not in plans
    assert plans["alpha-deal"]["custom"] is True
    assert plans["free"]["limits"]["members"] == 3


def test_an_owner_sets_and_clears_the_budget(world: World) -> None:
    client = client_for(world.alice, world.alpha)
    response = _put(client, f"{API}/budget", {"budget_usd": "300.25", "alert_thresholds": [75, 95]})
    assert response.status_code == 200, response.content
    assert response.json()["budget_usd"] == "300.2500"
    assert response.json()["alert_thresholds"] == [75, 95]
    assert Budget.objects.get(organization=world.alpha, scope="organization").limit_usd == Decimal("300.25")

    response = _put(client, f"{API}/budget", {"budget_usd": 40})  # thresholds left out: unchanged
    assert response.json()["budget_usd"] == "40.0000"
    assert response.json()["alert_thresholds"] == [75, 95]

    assert _put(client, f"{API}/budget", {"budget_usd": None}).json()["budget_usd"] is None
    assert not Budget.objects.filter(organization=world.alpha).exists()


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"budget_usd": -1}, "budget_usd", "cannot be negative"),
        ({"budget_usd": "-0.01"}, "budget_usd", "cannot be negative"),
        ({"budget_usd": "a lot"}, "budget_usd", "is not an amount"),
        ({"budget_usd": True}, "budget_usd", "Enter the budget in US dollars"),
        ({"budget_usd": [5]}, "budget_usd", "Enter the budget in US dollars"),
        ({"budget_usd": "Infinity"}, "budget_usd", "Enter the budget in US dollars"),
        ({"budget_usd": 5, "alert_thresholds": [0]}, "alert_thresholds", "out of range"),
        ({"budget_usd": 5, "alert_thresholds": "often"}, "alert_thresholds", "not a whole percentage"),
        ({"budget_usd": 5, "alert_thresholds": [10, 20, 30, 40, 50, 60]}, "alert_thresholds", "one to five"),
        ({}, "budget_usd", "required"),
        ({"budget_usd": 5, "currency": "eur"}, "currency", "Unknown field"),
    ],
)
def test_a_bad_budget_is_a_400_naming_the_field_and_changes_nothing(
    world: World, body: dict[str, Any], field: str, message: str
) -> None:
    response = _put(client_for(world.alice, world.alpha), f"{API}/budget", body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert field in error["fields"], error
    assert message in json.dumps(error), error
    assert not Budget.objects.filter(organization=world.alpha).exists()
    assert billing_account_for(world.alpha).alert_thresholds == [50, 80, 100]


def test_members_viewers_and_read_keys_cannot_change_billing(world: World) -> None:
    for role in (Membership.Role.MEMBER, Membership.Role.VIEWER):
        user = make_user(f"{role}-api-billing@alpha.test")
        Membership.objects.create(user=user, organization=world.alpha, role=role)
        client = client_for(user, world.alpha)
        assert client.get(API).status_code == 200
        assert _put(client, f"{API}/budget", {"budget_usd": 5}).status_code == 403
        assert _post(client, f"{API}/checkout", {"plan": "free"}).status_code == 403
    _, raw = new_key(world, ["billing:read"])
    response = _put(key_client(raw), f"{API}/budget", {"budget_usd": 5})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "missing_scope"
    _, other = new_key(world, ["llm:write"])
    assert key_client(other).get(API).status_code == 403
    assert not Budget.objects.filter(organization=world.alpha).exists()
    assert billing_account_for(world.alpha).plan.key == "business"


def test_a_downgrade_below_usage_is_a_409_naming_what_to_reduce(world: World) -> None:
    for index in range(2):
        Membership.objects.create(user=make_user(f"api-extra{index}@alpha.test"), organization=world.alpha)
    _, raw = new_key(world, ["billing:write"])
    response = _post(key_client(raw), f"{API}/checkout", {"plan": "free"})
    assert response.status_code == 409
    body = response.json()
    assert body["error"]["code"] == "downgrade_blocked"
    assert "Remove 1 member first." in body["error"]["message"]
    assert [(item["limit"], item["reduce_by"]) for item in body["reduce"]] == [("members", 1.0)]
    assert billing_account_for(world.alpha).plan.key == "business"


def test_checkout_of_unknown_or_foreign_plans_is_a_400(world: World) -> None:
    Plan.objects.create(
        key="beta-deal", name="Beta deal", kind="custom", public=False, organization=world.beta
    )
    client = client_for(world.alice, world.alpha)
    for plan in ("beta-deal", "platinum"):
        response = _post(client, f"{API}/checkout", {"plan": plan})
        assert response.status_code == 400, plan
        assert response.json()["error"]["fields"] == {"plan": [f"There is no plan {plan!r} to choose."]}


def test_a_free_plan_changes_at_once(world: World) -> None:
    response = _post(client_for(world.alice, world.alpha), f"{API}/checkout", {"plan": "free"})
    assert response.status_code == 200
    assert response.json() == {"url": "", "plan": "free", "changed": True}
    assert billing_account_for(world.alpha).plan.key == "free"


def test_a_paid_plan_answers_stripes_checkout_page(world: World, fake: FakeStripe) -> None:  # noqa: F811
    _set_plan(world.alpha, "free")
    prices = catalogue_prices(fake)
    response = _post(client_for(world.alice, world.alpha), f"{API}/checkout", {"plan": "team"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["changed"] is False
    assert body["url"].startswith(fake.origin + "/checkout/")
    session = fake.get("checkout.session", body["url"].rsplit("/", 1)[-1])
    assert session["mode"] == "subscription"
    assert prices["team"] in json.dumps(session)
    assert session["success_url"].startswith("http://alpha.")
    assert "/billing/checkout/success/?plan=team" in session["success_url"]
    # The plan changes when Stripe's webhook says the subscription started, not before.
    assert billing_account_for(world.alpha).plan.key == "free"


def test_the_current_plan_or_free_under_a_running_subscription_is_a_409(world: World) -> None:
    client = client_for(world.alice, world.alpha)
    response = _post(client, f"{API}/checkout", {"plan": "business"})
    assert response.status_code == 409
    assert response.json()["error"]["message"] == "Alpha is already on the Business plan."
    account = billing_account_for(world.alpha)
    account.stripe_subscription_id = "sub_running"
    account.save()
    response = _post(client, f"{API}/checkout", {"plan": "free"})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "subscription_active"
    assert "cancel it in the payment portal" in response.json()["error"]["message"]
    assert billing_account_for(world.alpha).plan.key == "business"


def test_projects_are_named_from_the_organizations_own_workspaces(world: World) -> None:
    from django_tenants.utils import schema_context

    from apps.workspaces.models import Workspace

    with schema_context(world.alpha.schema_name):
        workspace = Workspace.objects.create(name="checkout-service", state=Workspace.State.STOPPED)
    _usage(world.alpha, kind="sandbox_seconds", quantity=60, source_type="workspace",
           source_id=str(workspace.pk), unit_price=Decimal("0.00003"))  # fmt: skip
    _, raw = new_key(world, ["billing:read"])
    for client in (key_client(raw), client_for(world.amy, world.alpha)):
        projects = client.get(f"{API}/usage").json()["by_project"]
        assert [(row["source_id"], row["name"]) for row in projects] == [
            (str(workspace.pk), "checkout-service")
        ]
    page = client_for(world.amy, world.alpha).get("/billing/").content.decode()
    assert f'<a href="/workspaces/{workspace.pk}/">checkout-service</a>' in page
