"""The plan catalogue shipped with Agentyard, and reading a plan's limits.

The catalogue is loaded by a data migration (0002_plan_catalogue) and by
`manage.py billing_plans_sync` after an upgrade adds plans; staff change prices and
limits in the back office afterwards, and custom plans live only in the table.
Limits: a missing key or None means unlimited.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection

from apps.billing.features import FEATURES
from apps.billing.models import BillingAccount, Plan, default_alert_thresholds
from apps.tenancy.models import Organization

BASIC_FEATURES = ["core_environment", "git", "terminal", "ai_assistance"]
BUILDER_FEATURES = [*BASIC_FEATURES, "code_analysis", "testing_tools", "knowledge"]
TEAM_FEATURES = [*BUILDER_FEATURES, "performance_profiling", "multi_agent"]
ALL_FEATURES = list(FEATURES)

# US dollars per unit (token, second, GB-hour) beyond what a plan includes.
STANDARD_UNIT_PRICES = {
    "llm_input_tokens": "0.000003",
    "llm_output_tokens": "0.000015",
    "llm_cached_tokens": "0.0000003",
    "sandbox_seconds": "0.00003",  # 0.108 USD per hour
    "storage_gb_hours": "0.0001",
}

CATALOGUE: list[dict[str, Any]] = [
    {
        "key": "free",
        "name": "Free",
        "kind": "free",
        "description": "Try Agentyard with a small team: one sandbox at a time, a monthly token allowance.",
        "monthly_fee": Decimal("0"),
        "features": BASIC_FEATURES,
        "limits": {
            "members": 3,
            "workspaces": 3,
            "concurrent_sandboxes": 1,
            "concurrent_agent_runs": 1,
            "monthly_tokens": 1_000_000,
            "sandbox_hours": 20,
            "storage_gb": 5,
        },
        "included": {},
        "unit_prices": {},
        "position": 10,
    },
    {
        "key": "payg",
        "name": "Pay as you go",
        "kind": "payg",
        "description": "No monthly fee: every token, sandbox second and GB-hour is billed at list price.",
        "monthly_fee": Decimal("0"),
        "features": BUILDER_FEATURES,
        "limits": {
            "members": 10,
            "workspaces": 20,
            "concurrent_sandboxes": 3,
            "concurrent_agent_runs": 3,
            "monthly_tokens": None,
            "sandbox_hours": None,
            "storage_gb": 50,
        },
        "included": {},
        "unit_prices": STANDARD_UNIT_PRICES,
        "position": 20,
    },
    {
        "key": "team",
        "name": "Team",
        "kind": "subscription",
        "description": "For teams: multi-agent runs, profiling and included usage each month.",
        "monthly_fee": Decimal("49.00"),
        "features": TEAM_FEATURES,
        "limits": {
            "members": 25,
            "workspaces": 50,
            "concurrent_sandboxes": 10,
            "concurrent_agent_runs": 10,
            "monthly_tokens": 50_000_000,
            "sandbox_hours": 500,
            "storage_gb": 200,
        },
        "included": {
            "llm_input_tokens": 10_000_000,
            "llm_output_tokens": 2_000_000,
            "sandbox_seconds": 360_000,
            "storage_gb_hours": 36_000,
        },
        "unit_prices": STANDARD_UNIT_PRICES,
        "position": 30,
    },
    {
        "key": "business",
        "name": "Business",
        "kind": "subscription",
        "description": "Single sign-on, audit export and room for the whole company.",
        "monthly_fee": Decimal("199.00"),
        "features": ALL_FEATURES,
        "limits": {
            "members": 250,
            "workspaces": 500,
            "concurrent_sandboxes": 50,
            "concurrent_agent_runs": 50,
            "monthly_tokens": 500_000_000,
            "sandbox_hours": 5_000,
            "storage_gb": 2_000,
        },
        "included": {
            "llm_input_tokens": 50_000_000,
            "llm_output_tokens": 10_000_000,
            "sandbox_seconds": 1_800_000,
            "storage_gb_hours": 360_000,
        },
        "unit_prices": STANDARD_UNIT_PRICES,
        "position": 40,
    },
    {
        "key": "reserved",
        "name": "Reserved capacity",
        "kind": "reserved",
        "description": "A prepaid monthly minimum that usage draws down; all of Business, no fixed caps.",
        "monthly_fee": Decimal("2000.00"),
        "features": ALL_FEATURES,
        "limits": {
            "members": None,
            "workspaces": None,
            "concurrent_sandboxes": 200,
            "concurrent_agent_runs": 200,
            "monthly_tokens": None,
            "sandbox_hours": None,
            "storage_gb": None,
        },
        # The minimum is drawn down at list prices; usage beyond it is billed as overage.
        "included": {},
        "unit_prices": STANDARD_UNIT_PRICES,
        "position": 50,
    },
]


def plan_catalogue_sync(plan_model: Any) -> list[str]:
    """Create the catalogue's plans that are missing (keys of those made); existing rows
    keep staff's edits."""
    made = []
    for entry in CATALOGUE:
        defaults = dict(entry)
        key = defaults.pop("key")
        _, created = plan_model.objects.get_or_create(key=key, defaults=defaults)
        if created:
            made.append(key)
    return made


# --- an organization's account and plan -------------------------------------------


def default_plan() -> Plan:
    """The plan a new organization starts on (settings.BILLING_DEFAULT_PLAN)."""
    key = str(settings.BILLING_DEFAULT_PLAN)
    try:
        return Plan.objects.get(key=key)
    except Plan.DoesNotExist:
        raise ImproperlyConfigured(
            f"BILLING_DEFAULT_PLAN is {key!r}, but there is no such plan; create it or pick another."
        ) from None


def billing_account_for(organization: Organization, *, lock: bool = False) -> BillingAccount:
    """The organization's account with its plan, made on first use on the default plan.

    With `lock` the row is locked FOR UPDATE until the transaction ends: quota checks
    lock it before they count, so two requests cannot both take the last slot."""
    accounts = BillingAccount.objects.select_related("plan")
    if lock:
        accounts = accounts.select_for_update(of=("self",))
    try:
        return accounts.get(organization=organization)
    except BillingAccount.DoesNotExist:
        pass
    # Two first uses at once: one insert wins, the other finds its row.
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {BillingAccount._meta.db_table}"  # noqa: S608 (the model's table)
            " (organization_id, plan_id, status, stripe_customer_id, stripe_subscription_id,"
            " subscription_version, cancel_at_period_end, limit_overrides, feature_overrides,"
            " alert_thresholds, updated_at)"
            " VALUES (%s, %s, %s, '', '', 0, false, '{}', '{}', %s, now())"
            " ON CONFLICT (organization_id) DO NOTHING",
            [
                organization.pk,
                default_plan().pk,
                BillingAccount.Status.ACTIVE,
                json.dumps(default_alert_thresholds()),
            ],
        )
    return accounts.get(organization=organization)
