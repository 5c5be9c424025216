"""The plan catalogue and the ledger's append-only guard."""

from typing import Any

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.billing.features import FEATURES, FeatureNotInPlan, feature_check
from apps.billing.models import Plan, UsageRecord
from apps.billing.plans import billing_account_for
from apps.billing.quotas import organization_limits
from apps.billing.services import DowngradeBlocked, account_overrides_set, custom_plan_create, plan_change
from apps.core.errors import Forbidden, Invalid, NotFound
from apps.tenancy.audit import Actor
from apps.tenancy.models import AuditEvent, Membership, OrganizationSSO
from tests.billing.plan_helpers import make_staff, plan_set
from tests.conftest import World
from tests.factories import make_user

pytestmark = pytest.mark.django_db


def test_the_catalogue_offers_free_payg_two_subscriptions_and_reserved_capacity() -> None:
    plans = {plan.key: plan for plan in Plan.objects.all()}
    assert {key: plans[key].kind for key in ("free", "payg", "team", "business", "reserved")} == {
        "free": "free",
        "payg": "payg",
        "team": "subscription",
        "business": "subscription",
        "reserved": "reserved",
    }
    assert plans["payg"].monthly_fee == 0
    assert plans["payg"].unit_prices
    assert plans["reserved"].monthly_fee > plans["business"].monthly_fee
    for plan in plans.values():
        assert set(plan.features) <= set(FEATURES), plan.key
    assert "sso" in plans["business"].features
    assert "sso" not in plans["team"].features


def test_a_usage_record_cannot_be_changed(world: World) -> None:
    record = UsageRecord.objects.create(
        organization=world.alpha,
        kind="sandbox_seconds",
        quantity=10,
        unit="second",
        source_type="workspace",
        source_id="1",
        idempotency_key="test-append-only",
        occurred_at=timezone.now(),
    )
    with pytest.raises(IntegrityError, match="append-only"), transaction.atomic():
        UsageRecord.objects.filter(pk=record.pk).update(quantity=1)
    with pytest.raises(IntegrityError, match="append-only"):
        _delete_now(record)
    record.refresh_from_db()
    assert record.quantity == 10


def _delete_now(record: UsageRecord) -> None:
    with transaction.atomic():
        UsageRecord.objects.filter(pk=record.pk).delete()
        # The check is deferred to commit; inside the test's transaction, run it now.
        with transaction.get_connection().cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")


# --- changing plans ----------------------------------------------------------------


def _members(world: World, count: int) -> None:
    """Make Alpha have `count` members (set-up: memberships made directly)."""
    have = Membership.objects.filter(organization=world.alpha).count()
    for index in range(count - have):
        user = make_user(f"extra{index}@alpha.test", f"Extra {index}")
        Membership.objects.create(user=user, organization=world.alpha, role=Membership.Role.MEMBER)


def test_a_downgrade_below_current_usage_names_what_to_reduce_and_changes_nothing(world: World) -> None:
    plan_set(world.alpha, "business")
    _members(world, 5)
    free = Plan.objects.get(key="free")
    with pytest.raises(DowngradeBlocked) as refused:
        plan_change(actor=Actor(user=world.alice), organization=world.alpha, plan=free)
    assert refused.value.status == 409
    assert "The Free plan allows 3 members; Alpha has 5. Remove 2 members first." in refused.value.message
    assert refused.value.reduce[0]["limit"] == "members"
    assert refused.value.reduce[0]["reduce_by"] == 2
    assert billing_account_for(world.alpha).plan.key == "business"
    assert not AuditEvent.objects.filter(organization=world.alpha, action="billing.plan_changed").exists()


def test_a_downgrade_that_fits_changes_the_plan_and_is_audited(world: World) -> None:
    plan_set(world.alpha, "business")
    team = Plan.objects.get(key="team")
    account = plan_change(actor=Actor(user=world.alice), organization=world.alpha, plan=team)
    assert account.plan.key == "team"
    event = AuditEvent.objects.get(organization=world.alpha, action="billing.plan_changed")
    assert event.changes == {"before": {"plan": "business"}, "after": {"plan": "team"}}
    # The new plan decides at once: SSO is no longer in it.
    with pytest.raises(FeatureNotInPlan):
        feature_check(organization=world.alpha, key="sso")


def test_single_sign_on_in_use_blocks_a_plan_without_it(world: World) -> None:
    plan_set(world.alpha, "business")
    OrganizationSSO.objects.create(
        organization=world.alpha, issuer="https://idp.alpha.test", client_id="x", verified_domain="alpha.test"
    )
    with pytest.raises(DowngradeBlocked, match="Turn single sign-on off first"):
        plan_change(
            actor=Actor(user=world.alice), organization=world.alpha, plan=Plan.objects.get(key="team")
        )


def test_staff_make_a_custom_plan_for_one_organization_only(world: World) -> None:
    staff = Actor(user=make_staff())
    plan = custom_plan_create(
        actor=staff,
        organization=world.alpha,
        key="alpha-enterprise",
        name="Alpha Enterprise",
        monthly_fee="5000",
        features=["core_environment", "sso"],
        limits={"members": 1000, "concurrent_sandboxes": None},
    )
    assert (plan.kind, plan.public, plan.organization) == ("custom", False, world.alpha)
    plan_change(actor=staff, organization=world.alpha, plan=plan, by_staff=True)
    assert organization_limits(world.alpha)["members"] == 1000
    assert organization_limits(world.alpha)["concurrent_sandboxes"] is None
    feature_check(organization=world.alpha, key="sso")
    with pytest.raises(NotFound):
        plan_change(actor=staff, organization=world.beta, plan=plan, by_staff=True)
    with pytest.raises(Forbidden):
        custom_plan_create(actor=Actor(user=world.alice), organization=world.alpha, key="mine", name="Mine")
    with pytest.raises(Invalid, match="Unknown features: teleport"):
        custom_plan_create(
            actor=staff, organization=world.alpha, key="bad", name="Bad", features=["teleport"]
        )


def test_limit_overrides_sit_on_top_of_the_plan(world: World) -> None:
    plan_set(world.alpha, "free")
    account_overrides_set(
        actor=Actor(user=make_staff()),
        organization=world.alpha,
        limit_overrides={"members": 10, "monthly_tokens": None},
    )
    limits = organization_limits(world.alpha)
    assert limits["members"] == 10  # the override
    assert limits["monthly_tokens"] is None  # unlimited by override
    assert limits["workspaces"] == 3  # the Free plan's own


def test_the_sync_command_adds_missing_plans_and_keeps_staffs_edits(world: World) -> None:
    from io import StringIO

    from django.core.management import call_command

    Plan.objects.filter(key="free").update(monthly_fee=1)  # staff's edit
    Plan.objects.filter(key="reserved", accounts__isnull=True).delete()
    out = StringIO()
    call_command("billing_plans_sync", stdout=out)
    assert out.getvalue().strip() == "Plans: 1 added: reserved."
    assert Plan.objects.get(key="free").monthly_fee == 1
    assert Plan.objects.get(key="reserved").kind == "reserved"


def test_the_demo_organization_starts_on_business_and_keeps_a_later_plan(
    tmp_path: Any, settings: Any
) -> None:
    from io import StringIO

    from django.core.management import call_command

    from apps.tenancy.models import Organization

    settings.BILLING_DEFAULT_PLAN = "free"  # as in production
    call_command("seed_demo", credentials=tmp_path / "credentials.json", stdout=StringIO())
    demo = Organization.objects.get(slug="demo")
    assert billing_account_for(demo).plan.key == "business"
    plan_set(demo, "team")
    call_command("seed_demo", credentials=tmp_path / "credentials.json", stdout=StringIO())
    assert billing_account_for(demo).plan.key == "team"
