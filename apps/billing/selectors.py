"""Reads of billing's tables for the pages, the REST API and the back office.

Every query on an organization's rows filters by it: billing's tables are in the
public schema, shared by every organization, so the filter is the isolation.
Usage comes from the daily roll-up (one row per day, kind, model and source), which
the ledger upserts in the same transaction as each UsageRecord; cost by person reads
the ledger itself (the roll-ups carry no person), bounded by its (organization,
occurred_at) index.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Count, Q, QuerySet, Sum
from django.utils import timezone

from apps.accounts.models import User
from apps.billing.models import (
    BillingAccount,
    Invoice,
    Plan,
    UsageDaily,
    UsageKind,
    UsageRecord,
    UsageSource,
    UsageUnit,
)
from apps.llm.models import Budget
from apps.tenancy.models import Organization

USAGE_DAYS_MAX = 400
KIND_UNITS: dict[str, str] = {
    UsageKind.LLM_INPUT_TOKENS: UsageUnit.TOKEN,
    UsageKind.LLM_OUTPUT_TOKENS: UsageUnit.TOKEN,
    UsageKind.LLM_CACHED_TOKENS: UsageUnit.TOKEN,
    UsageKind.SANDBOX_SECONDS: UsageUnit.SECOND,
    UsageKind.STORAGE_GB_HOURS: UsageUnit.GB_HOUR,
}
# Where a project's cost comes from: the agent run or the workspace that spent it.
PROJECT_SOURCES = (UsageSource.AGENT_RUN, UsageSource.WORKSPACE)


@dataclass(frozen=True)
class UsageFilter:
    """Which usage to read: the last `days` days (UTC, today included), optionally one
    kind, model or source (type, and id within it)."""

    days: int = 30
    kind: str = ""
    model: str = ""
    source_type: str = ""
    source_id: str = ""

    def first_day(self, today: date | None = None) -> date:
        return (today or timezone.now().date()) - timedelta(days=self.days - 1)


def _daily(organization: Organization, usage: UsageFilter) -> QuerySet[UsageDaily]:
    rows = UsageDaily.objects.filter(organization=organization, day__gte=usage.first_day())
    if usage.kind:
        rows = rows.filter(kind=usage.kind)
    if usage.model:
        rows = rows.filter(model=usage.model)
    if usage.source_type:
        rows = rows.filter(source_type=usage.source_type)
    if usage.source_id:
        rows = rows.filter(source_id=usage.source_id)
    return rows


def _sums(row: dict[str, Any]) -> dict[str, Decimal]:
    return {"quantity": Decimal(row["quantity"] or 0), "amount": Decimal(row["amount"] or 0)}


def usage_by_day(*, organization: Organization, usage: UsageFilter) -> list[dict[str, Any]]:
    """One row per day and kind with usage: quantity (in the kind's unit) and amount (USD)."""
    rows = (
        _daily(organization, usage)
        .values("day", "kind")
        .annotate(quantity=Sum("quantity"), amount=Sum("amount"))
        .order_by("day", "kind")
    )
    return [
        {"day": row["day"], "kind": row["kind"], "unit": KIND_UNITS.get(row["kind"], ""), **_sums(row)}
        for row in rows
    ]


def usage_by_kind(*, organization: Organization, usage: UsageFilter) -> list[dict[str, Any]]:
    rows = (
        _daily(organization, usage)
        .values("kind")
        .annotate(quantity=Sum("quantity"), amount=Sum("amount"))
        .order_by("kind")
    )
    return [{"kind": row["kind"], "unit": KIND_UNITS.get(row["kind"], ""), **_sums(row)} for row in rows]


def cost_by_model(*, organization: Organization, usage: UsageFilter) -> list[dict[str, Any]]:
    """LLM usage per model, most expensive first: tokens of each kind and the cost."""
    rows = (
        _daily(organization, usage)
        .exclude(model="")
        .values("model", "kind")
        .annotate(quantity=Sum("quantity"), amount=Sum("amount"))
    )
    models: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = models.setdefault(
            row["model"],
            {
                "model": row["model"],
                "input_tokens": Decimal(0),
                "output_tokens": Decimal(0),
                "cached_tokens": Decimal(0),
                "amount": Decimal(0),
            },
        )
        column = {
            UsageKind.LLM_INPUT_TOKENS: "input_tokens",
            UsageKind.LLM_OUTPUT_TOKENS: "output_tokens",
            UsageKind.LLM_CACHED_TOKENS: "cached_tokens",
        }.get(row["kind"])
        if column:
            entry[column] += Decimal(row["quantity"] or 0)
        entry["amount"] += Decimal(row["amount"] or 0)
    return sorted(models.values(), key=lambda entry: (-entry["amount"], entry["model"]))


def cost_by_user(*, organization: Organization, usage: UsageFilter) -> list[dict[str, Any]]:
    """Cost per person who caused it (agent runs they started, calls they made), most first;
    usage with no person (API keys, storage, the platform) is one row with user_id None."""
    since = datetime.combine(usage.first_day(), time.min, tzinfo=UTC)
    records = UsageRecord.objects.filter(organization=organization, occurred_at__gte=since)
    if usage.kind:
        records = records.filter(kind=usage.kind)
    if usage.model:
        records = records.filter(model=usage.model)
    if usage.source_type:
        records = records.filter(source_type=usage.source_type)
    if usage.source_id:
        records = records.filter(source_id=usage.source_id)
    rows = list(
        records.values("user_id").annotate(amount=Sum("amount"), records=Count("id")).order_by("user_id")
    )
    user_ids = {row["user_id"] for row in rows if row["user_id"]}
    emails = dict(User.objects.filter(pk__in=user_ids).values_list("pk", "email")) if user_ids else {}
    result = [
        {
            "user_id": row["user_id"],
            "email": emails.get(row["user_id"], "") if row["user_id"] else "",
            "amount": Decimal(row["amount"] or 0),
            "records": int(row["records"]),
        }
        for row in rows
    ]
    return sorted(result, key=lambda entry: (-entry["amount"], entry["user_id"] or 0))


def _source_names(organization: Organization, source_type: str, source_ids: set[str]) -> dict[str, str]:
    """Names of the organization's agent runs and workspaces, read in its own schema when
    that is the connection's (its pages and API); elsewhere (the back office) ids only.
    Ids that no longer resolve (deleted) get no name."""
    if getattr(connection, "schema_name", None) != organization.schema_name:
        return {}
    if source_type == UsageSource.WORKSPACE:
        from apps.workspaces.models import Workspace

        numeric = {source_id for source_id in source_ids if source_id.isdigit()}
        return {
            str(pk): name for pk, name in Workspace.objects.filter(pk__in=numeric).values_list("pk", "name")
        }
    if source_type == UsageSource.AGENT_RUN:
        from apps.agents.models import AgentRun

        run_ids = set()
        for source_id in source_ids:
            try:
                run_ids.add(uuid.UUID(source_id))
            except ValueError:
                continue  # not a run id: shown without a name
        return {
            str(pk): task[:80]
            for pk, task in AgentRun.objects.filter(pk__in=run_ids).values_list("pk", "task")
        }
    return {}


def cost_by_project(
    *, organization: Organization, usage: UsageFilter, with_names: bool = True
) -> list[dict[str, Any]]:
    """Cost per agent run and per workspace, most first, with their names where they still exist."""
    rows = (
        _daily(organization, usage)
        .filter(source_type__in=PROJECT_SOURCES)
        .values("source_type", "source_id")
        .annotate(quantity=Sum("quantity"), amount=Sum("amount"))
    )
    entries = [
        {
            "source_type": row["source_type"],
            "source_id": row["source_id"],
            "amount": Decimal(row["amount"] or 0),
        }
        for row in rows
    ]
    if with_names:
        wanted: dict[str, set[str]] = defaultdict(set)
        for entry in entries:
            wanted[entry["source_type"]].add(entry["source_id"])
        names = {
            source_type: _source_names(organization, source_type, ids) for source_type, ids in wanted.items()
        }
        for entry in entries:
            entry["name"] = names.get(entry["source_type"], {}).get(entry["source_id"], "")
    return sorted(entries, key=lambda entry: (-entry["amount"], entry["source_type"], entry["source_id"]))


def usage_total(*, organization: Organization, usage: UsageFilter) -> Decimal:
    total = _daily(organization, usage).aggregate(amount=Sum("amount"))["amount"]
    return Decimal(total or 0)


def usage_models(*, organization: Organization, days: int = USAGE_DAYS_MAX) -> list[str]:
    """The models with usage in the window (the usage filter's choices)."""
    return list(
        UsageDaily.objects.filter(organization=organization, day__gte=UsageFilter(days=days).first_day())
        .exclude(model="")
        .values_list("model", flat=True)
        .distinct()
        .order_by("model")
    )


def invoices_list(*, organization: Organization, limit: int = 100) -> list[Invoice]:
    return list(Invoice.objects.filter(organization=organization).order_by("-created", "-pk")[:limit])


def plans_available(*, organization: Organization) -> list[Plan]:
    """The plans the organization may choose: the public catalogue and its own custom plans,
    never archived ones nor another organization's."""
    return list(
        Plan.objects.filter(archived=False)
        .filter(Q(public=True, organization__isnull=True) | Q(organization=organization))
        .order_by("position", "key")
    )


def plan_for_organization(*, organization: Organization, key: str) -> Plan | None:
    """A plan the organization may choose, by key; None for unknown, archived or another's."""
    for plan in plans_available(organization=organization):
        if plan.key == key:
            return plan
    return None


# The account overview: plan, status, period, limits with what is used, budget ---------------------

LIMIT_LABELS: dict[str, str] = {
    "members": "Members",
    "workspaces": "Workspaces",
    "concurrent_sandboxes": "Sandboxes running at once",
    "concurrent_agent_runs": "Agent runs at once",
    "monthly_tokens": "LLM tokens this month",
    "sandbox_hours": "Sandbox hours this month",
    "storage_gb": "Workspace storage (GB)",
}
LIMIT_UNITS: dict[str, str] = {"sandbox_hours": "h", "storage_gb": "GB"}


@dataclass(frozen=True)
class LimitUse:
    key: str
    label: str
    used: float
    limit: float | None  # None: unlimited

    @property
    def percent(self) -> int | None:
        if self.limit is None:
            return None
        if self.limit <= 0:
            return 100
        return int(self.used * 100 // self.limit)

    @property
    def bar(self) -> int:
        return min(self.percent or 0, 100)

    @property
    def used_text(self) -> str:
        return _amount_text(self.used, LIMIT_UNITS.get(self.key, ""))

    @property
    def limit_text(self) -> str:
        return "Unlimited" if self.limit is None else _amount_text(self.limit, LIMIT_UNITS.get(self.key, ""))


def _amount_text(value: float, unit: str) -> str:
    text = f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"
    return f"{text} {unit}".strip()


def limits_used(*, organization: Organization) -> dict[str, float]:
    """What the organization uses of each limit now, counted as the quota checks and the
    downgrade check count it (apps/billing/quotas.py, services.current_usage)."""
    from apps.billing import quotas, services
    from apps.scheduling.selectors import organization_pool_status

    now = services.current_usage(organization)
    return {
        "members": float(now.members),
        "workspaces": float(now.workspaces),
        "concurrent_sandboxes": float(now.concurrent_sandboxes),
        "concurrent_agent_runs": float(organization_pool_status(organization=organization).in_flight),
        "monthly_tokens": float(quotas.monthly_tokens_written(organization.pk)),
        "sandbox_hours": round(quotas.sandbox_hours_used(organization), 2),
        "storage_gb": round(now.storage_gb, 2),
    }


@dataclass(frozen=True)
class AccountOverview:
    account: BillingAccount
    plan: Plan
    limits: list[LimitUse]
    period_start: datetime
    period_end: datetime
    period_cost: Decimal  # list-price value of the usage since the period started
    budget_usd: Decimal | None  # the organization's monthly LLM budget (apps/llm Budget), if any
    budget_spent: Decimal

    @property
    def status(self) -> str:
        return self.account.status

    @property
    def period_days(self) -> int:
        """The days of the period so far, today included (the usage filter's window)."""
        elapsed = (timezone.now().date() - self.period_start.date()).days + 1
        return min(max(elapsed, 1), USAGE_DAYS_MAX)

    @property
    def status_label(self) -> str:
        return self.account.get_status_display()

    @property
    def subscribed(self) -> bool:
        return bool(self.account.stripe_subscription_id)

    @property
    def has_customer(self) -> bool:
        return bool(self.account.stripe_customer_id)

    @property
    def cancel_at_period_end(self) -> bool:
        return self.account.cancel_at_period_end

    @property
    def has_overrides(self) -> bool:
        return bool(self.account.limit_overrides or self.account.feature_overrides)

    @property
    def alert_thresholds(self) -> list[int]:
        return sorted(int(value) for value in (self.account.alert_thresholds or []))

    @property
    def thresholds_text(self) -> str:
        return ", ".join(f"{value}%" for value in self.alert_thresholds) or "no thresholds (alerts off)"

    @property
    def period_cost_text(self) -> str:
        from apps.llm.pages import money

        return money(self.period_cost)

    @property
    def budget_text(self) -> str:
        from apps.llm.pages import money

        return money(self.budget_usd) if self.budget_usd is not None else ""

    @property
    def budget_spent_text(self) -> str:
        from apps.llm.pages import money

        return money(self.budget_spent)

    def budget_initial(self) -> dict[str, str]:
        return {
            "budget_usd": "" if self.budget_usd is None else f"{self.budget_usd.normalize():f}",
            "alert_thresholds": ", ".join(str(value) for value in self.alert_thresholds),
        }


def organization_budget(*, organization: Organization) -> Budget | None:
    """The organization-wide monthly LLM budget the billing page sets (apps/llm Budget)."""
    return Budget.objects.filter(
        organization=organization, scope=Budget.Scope.ORGANIZATION, period=Budget.Period.MONTH
    ).first()


def account_overview(*, organization: Organization) -> AccountOverview:
    from apps.billing.plans import billing_account_for
    from apps.billing.quotas import account_limits, month_start
    from apps.llm import selectors as llm_selectors

    account = billing_account_for(organization)
    limits = account_limits(account)
    used = limits_used(organization=organization)
    now = timezone.now()
    if account.current_period_start and account.current_period_end:
        start, end = account.current_period_start, account.current_period_end
    else:
        start = month_start(now)
        end = (start + timedelta(days=32)).replace(day=1)
    period_cost = UsageDaily.objects.filter(organization=organization, day__gte=start.date()).aggregate(
        amount=Sum("amount")
    )["amount"]
    budget = organization_budget(organization=organization)
    spent = Decimal(0)
    if budget is not None:
        spent = Decimal(
            str(
                llm_selectors.budget_spent(
                    organization_id=organization.pk,
                    budget=llm_selectors.BudgetInfo(
                        id=budget.pk,
                        scope=budget.scope,
                        api_key_id=budget.api_key_id,
                        run_id=budget.run_id,
                        period=budget.period,
                        limit_usd=float(budget.limit_usd),
                    ),
                    now=now,
                )
            )
        ).quantize(Decimal("0.0001"))
    return AccountOverview(
        account=account,
        plan=account.plan,
        limits=[
            LimitUse(
                key=key, label=LIMIT_LABELS.get(key, key), used=used.get(key, 0.0), limit=limits.get(key)
            )
            for key in LIMIT_LABELS
        ],
        period_start=start,
        period_end=end,
        period_cost=Decimal(period_cost or 0),
        budget_usd=budget.limit_usd if budget is not None else None,
        budget_spent=spent,
    )


def quota_alerts_this_month(*, organization: Organization) -> list[dict[str, Any]]:
    """The alerts sent this month (UTC), newest first, with what they were about."""
    from apps.billing.models import QuotaAlert
    from apps.billing.quotas import month_start

    rows = QuotaAlert.objects.filter(
        organization=organization, period_start__gte=month_start().date()
    ).order_by("-created_at", "-threshold")
    return [
        {
            "limit": row.limit,
            "label": "Monthly budget"
            if row.limit.startswith("budget")
            else LIMIT_LABELS.get(row.limit, row.limit),
            "threshold": row.threshold,
            "created_at": row.created_at,
        }
        for row in rows[:50]
    ]
