"""Billing's state changes outside Stripe: changing an organization's plan (a downgrade
below current usage is refused, naming what to reduce), staff overrides of limits and
features, custom plans, and the organization's monthly money budget (which is the LLM
gateway's Budget, apps/llm/budgets.py: one budget, enforced where the money is spent).

Each change locks the billing account, is audited (apps/tenancy/audit.py) and forgets
this process's cached quota readings after commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import Sum
from django_tenants.utils import schema_context

from apps.billing.features import FEATURES
from apps.billing.models import LIMIT_KEYS, BillingAccount, Plan
from apps.billing.quotas import account_limits, members_count, quota_lock, quota_snapshots_clear
from apps.core.errors import Conflict, Forbidden, Invalid, NotFound
from apps.tenancy.audit import Actor, audit_record
from apps.tenancy.models import Organization

# What must be reduced before a downgrade, and how to say it.
REDUCIBLE = {
    "members": ("member", "members", "Remove {n} {what} first."),
    "workspaces": ("workspace", "workspaces", "Destroy {n} {what} first."),
    "concurrent_sandboxes": ("running sandbox", "running sandboxes", "Stop {n} {what} first."),
    "storage_gb": ("GB of workspace storage", "GB of workspace storage", "Free {n} {what} first."),
}


class DowngradeBlocked(Conflict):
    status = 409
    code = "downgrade_blocked"

    def __init__(self, message: str, *, reduce: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.reduce = reduce

    @property
    def extra_body(self) -> dict[str, Any]:
        return {"detail": self.message, "code": self.code, "reduce": self.reduce}


@dataclass(frozen=True)
class CurrentUsage:
    members: int
    workspaces: int
    concurrent_sandboxes: int
    storage_gb: float
    sso_enabled: bool


def current_usage(organization: Organization) -> CurrentUsage:
    """What the organization has now, for the limits a downgrade can fall below."""
    from apps.tenancy.models import OrganizationSSO
    from apps.workspaces.models import Workspace

    with schema_context(organization.schema_name):
        alive = Workspace.objects.exclude(state=Workspace.State.DELETED)
        workspaces = alive.count()
        running = alive.filter(state=Workspace.State.RUNNING).count()
        disk_mb = alive.aggregate(total=Sum("disk_mb"))["total"] or 0
    sso = OrganizationSSO.objects.filter(organization=organization, enabled=True).exists()
    return CurrentUsage(
        members=members_count(organization),
        workspaces=workspaces,
        concurrent_sandboxes=running,
        storage_gb=disk_mb / 1024,
        sso_enabled=sso,
    )


def _number(value: float) -> str:
    return f"{int(value):,}" if value == int(value) else f"{value:,.2f}"


def downgrade_problems(
    *,
    organization: Organization,
    plan: Plan,
    limit_overrides: dict[str, Any],
    feature_overrides: dict[str, Any],
) -> list[dict[str, Any]]:
    """What the organization would have to reduce to fit `plan` (with its overrides)."""
    probe = BillingAccount(plan=plan, limit_overrides=limit_overrides, feature_overrides=feature_overrides)
    limits = account_limits(probe)
    usage = current_usage(organization)
    problems: list[dict[str, Any]] = []
    for key, (one, many, remedy) in REDUCIBLE.items():
        allowed = limits[key]
        used = float(getattr(usage, key))
        if allowed is None or used <= allowed:
            continue
        excess = used - allowed
        allowed_words = f"{_number(allowed)} {one if allowed == 1 else many}"
        problems.append(
            {
                "limit": key,
                "allowed": allowed,
                "used": used,
                "reduce_by": excess,
                "message": (
                    f"The {plan.name} plan allows {allowed_words}; {organization.name} has {_number(used)}. "
                    + remedy.format(n=_number(excess), what=one if excess == 1 else many)
                ),
            }
        )
    from apps.billing.features import account_features

    if usage.sso_enabled and "sso" not in account_features(probe):
        problems.append(
            {
                "limit": "feature:sso",
                "allowed": 0,
                "used": 1,
                "reduce_by": 1,
                "message": f"The {plan.name} plan has no single sign-on, which {organization.name} uses."
                " Turn single sign-on off first.",
            }
        )
    return problems


def _forget_quota_readings(organization: Organization) -> None:
    quota_snapshots_clear(organization_id=organization.pk)
    transaction.on_commit(lambda: quota_snapshots_clear(organization_id=organization.pk))


@transaction.atomic
def plan_change(
    *,
    actor: Actor,
    organization: Organization,
    plan: Plan,
    check_usage: bool = True,
    by_staff: bool = False,
) -> BillingAccount:
    """Move the organization to `plan`. Refused (DowngradeBlocked, 409) when it has more
    than the plan allows of something it can reduce; `check_usage` False is for changes
    that already happened elsewhere (a Stripe subscription ending). Archived plans, and
    plans that are not public, only staff may choose (`by_staff`); another
    organization's custom plan never."""
    if plan.organization_id is not None and plan.organization_id != organization.pk:
        raise NotFound("No such plan.")
    if not by_staff and (plan.archived or not plan.public) and plan.organization_id != organization.pk:
        raise Forbidden(f"The {plan.name} plan is not offered; ask us about it.", code="plan_not_offered")
    account = quota_lock(organization)
    if account.plan_id == plan.pk:
        return account
    if check_usage:
        problems = downgrade_problems(
            organization=organization,
            plan=plan,
            limit_overrides=account.limit_overrides or {},
            feature_overrides=account.feature_overrides or {},
        )
        if problems:
            raise DowngradeBlocked(" ".join(problem["message"] for problem in problems), reduce=problems)
    before = {"plan": account.plan.key}
    account.plan = plan
    account.save(update_fields=["plan", "updated_at"])
    audit_record(
        actor=actor,
        organization=organization,
        action="billing.plan_changed",
        target=account,
        before=before,
        after={"plan": plan.key},
    )
    _forget_quota_readings(organization)
    return account


def _clean_limit_overrides(raw: Any) -> dict[str, int | None]:
    if not isinstance(raw, dict):
        raise Invalid(
            "Give the limit overrides as an object of limit: number or null.", field="limit_overrides"
        )
    cleaned: dict[str, int | None] = {}
    for key, value in raw.items():
        if key not in LIMIT_KEYS:
            raise Invalid(
                f"Unknown limit {key!r}; the limits are {', '.join(LIMIT_KEYS)}.", field="limit_overrides"
            )
        if value is None:
            cleaned[key] = None  # unlimited
            continue
        if isinstance(value, bool) or not isinstance(value, int | str | float | Decimal):
            raise Invalid(f"The {key} override must be a whole number or null.", field="limit_overrides")
        try:
            number = Decimal(str(value))
        except ArithmeticError:
            raise Invalid(
                f"The {key} override must be a whole number or null.", field="limit_overrides"
            ) from None
        if not number.is_finite() or number < 0 or number != number.to_integral_value() or number > 10**15:
            raise Invalid(
                f"The {key} override must be a whole number from 0 to 10^15, or null.",
                field="limit_overrides",
            )
        cleaned[key] = int(number)
    return cleaned


def _clean_feature_overrides(raw: Any) -> dict[str, bool]:
    if not isinstance(raw, dict):
        raise Invalid(
            "Give the feature overrides as an object of feature: true or false.", field="feature_overrides"
        )
    cleaned: dict[str, bool] = {}
    for key, value in raw.items():
        if key not in FEATURES:
            raise Invalid(
                f"Unknown feature {key!r}; the features are {', '.join(FEATURES)}.", field="feature_overrides"
            )
        if not isinstance(value, bool):
            raise Invalid(f"The {key} override must be true or false.", field="feature_overrides")
        cleaned[key] = value
    return cleaned


@transaction.atomic
def account_overrides_set(
    *,
    actor: Actor,
    organization: Organization,
    limit_overrides: Any = None,
    feature_overrides: Any = None,
) -> BillingAccount:
    """Staff: replace the organization's limit overrides ({limit: number or null for
    unlimited}) and/or feature overrides ({feature: bool}); None leaves one unchanged, {}
    clears it. Bad keys or values are a 400 and nothing changes."""
    if actor.user is None or not actor.user.is_staff:
        raise Forbidden("Only platform staff may override an organization's plan.", code="staff_only")
    limits = _clean_limit_overrides(limit_overrides) if limit_overrides is not None else None
    features = _clean_feature_overrides(feature_overrides) if feature_overrides is not None else None
    account = quota_lock(organization)
    before = {"limit_overrides": account.limit_overrides, "feature_overrides": account.feature_overrides}
    if limits is not None:
        account.limit_overrides = limits
    if features is not None:
        account.feature_overrides = features
    account.save(update_fields=["limit_overrides", "feature_overrides", "updated_at"])
    audit_record(
        actor=actor,
        organization=organization,
        action="billing.overrides_changed",
        target=account,
        before=before,
        after={"limit_overrides": account.limit_overrides, "feature_overrides": account.feature_overrides},
    )
    _forget_quota_readings(organization)
    return account


@transaction.atomic
def alert_thresholds_set(*, actor: Actor, organization: Organization, thresholds: Any) -> BillingAccount:
    """The percentages of a limit or budget at which owners are alerted (1-100, at most 5)."""
    if not isinstance(thresholds, list) or not 1 <= len(thresholds) <= 5:
        raise Invalid("Give one to five alert thresholds in percent.", field="alert_thresholds")
    cleaned: set[int] = set()
    for value in thresholds:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
            raise Invalid(
                "Each alert threshold is a whole percentage from 1 to 100.", field="alert_thresholds"
            )
        cleaned.add(value)
    account = quota_lock(organization)
    before = {"alert_thresholds": account.alert_thresholds}
    account.alert_thresholds = sorted(cleaned)
    account.save(update_fields=["alert_thresholds", "updated_at"])
    audit_record(
        actor=actor,
        organization=organization,
        action="billing.alert_thresholds_changed",
        target=account,
        before=before,
        after={"alert_thresholds": account.alert_thresholds},
    )
    _forget_quota_readings(organization)
    return account


@transaction.atomic
def custom_plan_create(
    *,
    actor: Actor,
    organization: Organization,
    key: str,
    name: str,
    monthly_fee: str | Decimal = "0",
    features: list[str] | None = None,
    limits: dict[str, Any] | None = None,
    unit_prices: dict[str, Any] | None = None,
    included: dict[str, Any] | None = None,
) -> Plan:
    """Staff: a plan made for one organization (not public), not yet assigned."""
    if actor.user is None or not actor.user.is_staff:
        raise Forbidden("Only platform staff may make custom plans.", code="staff_only")
    from django.utils.text import slugify

    if not key or slugify(key) != key or len(key) > 50:
        raise Invalid("Give the plan a key of lowercase letters, digits and dashes.", field="key")
    if Plan.objects.filter(key=key).exists():
        raise Conflict("A plan with this key exists; choose another.", code="plan_key_taken", field="key")
    name = (name or "").strip()
    if not name or len(name) > 100:
        raise Invalid("Give the plan a name of at most 100 characters.", field="name")
    try:
        fee = Decimal(str(monthly_fee))
    except ArithmeticError:
        raise Invalid("Give the monthly fee as a number of US dollars.", field="monthly_fee") from None
    if not fee.is_finite() or fee < 0 or fee > Decimal(10_000_000):
        raise Invalid("The monthly fee must be between 0 and 10,000,000 US dollars.", field="monthly_fee")
    feature_keys = list(dict.fromkeys(features or []))
    unknown = [feature for feature in feature_keys if feature not in FEATURES]
    if unknown:
        raise Invalid(f"Unknown features: {', '.join(map(str, unknown))}.", field="features")
    plan = Plan.objects.create(
        key=key,
        name=name,
        kind=Plan.Kind.CUSTOM,
        monthly_fee=fee,
        features=feature_keys,
        limits=_clean_limit_overrides(limits or {}),
        included=_clean_quantities(included or {}, "included"),
        unit_prices={
            kind: str(price) for kind, price in _clean_quantities(unit_prices or {}, "unit_prices").items()
        },
        public=False,
        organization=organization,
        position=1000,
    )
    audit_record(
        actor=actor,
        organization=organization,
        action="billing.custom_plan_created",
        target=plan,
        after={
            "key": key,
            "name": name,
            "monthly_fee": str(fee),
            "features": feature_keys,
            "limits": plan.limits,
        },
    )
    return plan


def _clean_quantities(raw: Any, field: str) -> dict[str, Decimal]:
    from apps.billing.models import UsageKind

    if not isinstance(raw, dict):
        raise Invalid(f"Give {field} as an object of usage kind: number.", field=field)
    cleaned: dict[str, Decimal] = {}
    for kind, value in raw.items():
        if kind not in UsageKind.values:
            raise Invalid(f"Unknown usage kind {kind!r}.", field=field)
        try:
            number = Decimal(str(value))
        except ArithmeticError:
            raise Invalid(f"{kind} must be a number.", field=field) from None
        if isinstance(value, bool) or not number.is_finite() or number < 0:
            raise Invalid(f"{kind} must be a number of at least 0.", field=field)
        cleaned[kind] = number
    return cleaned


# --- the money budget: the LLM gateway's organization budget --------------------


def organization_budget_set(*, actor: Actor, organization: Organization, limit_usd: Any) -> Any:
    """The organization's monthly spending limit in US dollars (the gateway enforces it
    before every call; alerts at the account's thresholds). A negative or non-numeric
    amount is a 400 (Invalid on limit_usd)."""
    from apps.llm.models import Budget
    from apps.llm.services import budget_set

    if limit_usd is None or isinstance(limit_usd, bool) or str(limit_usd).strip() == "":
        raise Invalid("Give the budget in US dollars.", field="limit_usd")
    budget = budget_set(
        organization=organization,
        scope=Budget.Scope.ORGANIZATION,
        period=Budget.Period.MONTH,
        limit_usd=str(limit_usd).strip(),
        actor=actor,
    )
    _forget_quota_readings(organization)
    return budget


def organization_budget_clear(*, actor: Actor, organization: Organization) -> None:
    from apps.llm.models import Budget
    from apps.llm.services import budget_delete

    budget = Budget.objects.filter(
        organization=organization, scope=Budget.Scope.ORGANIZATION, period=Budget.Period.MONTH
    ).first()
    if budget is not None:
        budget_delete(organization=organization, budget_id=budget.pk, actor=actor)
    _forget_quota_readings(organization)


def plan_for_key(*, organization: Organization, key: str) -> Plan:
    """A plan the organization may be moved to by key (the catalogue's or its own custom)."""
    plan = Plan.objects.filter(key=key).first()
    if plan is None or (plan.organization_id is not None and plan.organization_id != organization.pk):
        raise NotFound(f"No plan {key!r}.", field="plan")
    return plan
