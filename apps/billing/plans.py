"""The plan catalogue shipped with Agentyard, and reading a plan's limits.

The catalogue is loaded by a data migration (0002_plan_catalogue) and by
`plan_catalogue_sync` after an upgrade changes it; staff change prices and
limits in the back office afterwards, and custom plans live only in the table.
Limits: a missing key or None means unlimited.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from apps.billing.features import FEATURES

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


def plan_catalogue_sync(plan_model: Any) -> None:
    """Create the catalogue's plans that are missing; existing rows keep staff's edits."""
    for entry in CATALOGUE:
        defaults = dict(entry)
        key = defaults.pop("key")
        plan_model.objects.get_or_create(key=key, defaults=defaults)
