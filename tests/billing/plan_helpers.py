"""Putting a test organization on a plan, and platform staff, for the billing tests.

Tests that use `db` change the organization's account inside their own transaction
(rolled back afterwards); live tests use `on_plan`, which restores the account."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from apps.accounts.models import User
from apps.billing.models import BillingAccount, Plan
from apps.billing.plans import billing_account_for
from apps.billing.quotas import quota_snapshots_clear
from apps.tenancy.models import Organization
from tests.factories import make_user


def plan_set(organization: Organization, key: str, **fields: Any) -> BillingAccount:
    """Put the organization on the plan (and set account fields, e.g. limit_overrides)
    directly: the set-up of a test, not the behaviour under test."""
    account = billing_account_for(organization)
    account.plan = Plan.objects.get(key=key)
    account.limit_overrides = fields.pop("limit_overrides", {})
    account.feature_overrides = fields.pop("feature_overrides", {})
    for name, value in fields.items():
        setattr(account, name, value)
    account.save()
    quota_snapshots_clear()
    return account


@contextmanager
def on_plan(organization: Organization, key: str, **fields: Any) -> Iterator[BillingAccount]:
    """plan_set for committed data (live tests), put back as it was afterwards."""
    account = billing_account_for(organization)
    saved = {
        "plan": account.plan,
        "limit_overrides": account.limit_overrides,
        "feature_overrides": account.feature_overrides,
        "alert_thresholds": account.alert_thresholds,
    }
    try:
        yield plan_set(organization, key, **fields)
    finally:
        account = billing_account_for(organization)
        for name, value in saved.items():
            setattr(account, name, value)
        account.save()
        quota_snapshots_clear()


def make_staff(email: str = "sam@agentyard.test") -> User:
    user = make_user(email, "Sam Staff")
    user.is_staff = True
    user.save(update_fields=["is_staff"])
    return user
