"""`manage.py billing_stripe_setup` makes in Stripe what the plans need, once, and the
plans can then be bought: the fake Stripe stands in for a fresh account."""

from collections.abc import Iterator
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from apps.billing.models import Plan, UsageKind
from apps.billing.reporting import event_name_for
from apps.billing.subscriptions import checkout_session_create
from apps.tenancy.models import Organization
from tests.billing.stripe_helpers import payer  # noqa: F401 (a fixture)
from tests.fakes.stripe_server import FakeStripe, stripe_server

pytestmark = pytest.mark.django_db


@pytest.fixture
def fresh_account() -> Iterator[FakeStripe]:
    """An empty Stripe account of its own (the session's fake has the tests' catalogue)."""
    with (
        stripe_server(api_key="sk_test_fresh") as fresh,
        override_settings(STRIPE_API_KEY="sk_test_fresh", STRIPE_API_BASE=fresh.origin),
    ):
        yield fresh


def setup() -> str:
    out = StringIO()
    call_command("billing_stripe_setup", stdout=out)
    return out.getvalue()


def test_setup_creates_the_meters_and_prices_once(fresh_account: FakeStripe) -> None:
    first = setup()
    meters = {meter["event_name"] for meter in fresh_account.objects("billing.meter")}
    assert meters == {event_name_for(kind) for kind in UsageKind.values}
    prices = {price["lookup_key"]: price for price in fresh_account.objects("price")}
    assert prices["team"]["unit_amount"] == 4900
    assert prices["team"]["recurring"]["usage_type"] == "licensed"
    metered = prices["payg_llm_input_tokens"]
    assert metered["recurring"]["usage_type"] == "metered"
    assert metered["recurring"]["meter"] in {meter["id"] for meter in fresh_account.objects("billing.meter")}
    assert metered["unit_amount_decimal"] == "0.0003"  # 0.000003 USD a token, in cents
    team_plan = Plan.objects.get(key="team")
    included = int(team_plan.included["llm_input_tokens"])
    tiers = prices["team_llm_input_tokens"]["tiers"]
    assert [(tier["up_to"], tier["unit_amount_decimal"]) for tier in tiers] == [
        (included, "0"),
        (None, "0.0003"),
    ]
    assert "free" not in prices
    made = len(meters) + len(prices) + len(fresh_account.objects("product"))
    assert first.splitlines()[-1] == f"{made} created, 0 already there."

    again = setup()
    assert again.splitlines()[-1].startswith("0 created")
    assert len(fresh_account.objects("price")) == len(prices)


def test_after_setup_a_plan_can_be_bought(fresh_account: FakeStripe, payer: Organization) -> None:  # noqa: F811
    setup()
    session = checkout_session_create(
        organization=payer,
        plan=Plan.objects.get(key="business"),
        success_url="https://x.test/ok",
        cancel_url="https://x.test/no",
    )
    items = fresh_account.get("checkout.session", session.id)["_line_items"]
    assert {item["price"]["lookup_key"] for item in items} == {"business"} | {
        f"business_{kind}" for kind in Plan.objects.get(key="business").unit_prices
    }


def test_setup_without_a_key_says_what_to_set() -> None:
    with override_settings(STRIPE_API_KEY=""), pytest.raises(CommandError, match="STRIPE_API_KEY"):
        setup()
