"""Limits and quotas: what an organization may use, enforced at the moment of use.

An organization's effective limits are its plan's `limits` with staff's
`limit_overrides` on top (a key present in the overrides wins, null meaning
unlimited); a limit missing from both is unlimited. Settings caps (e.g.
WORKSPACES_MAX_RUNNING_PER_ORGANIZATION, AGENTS_ORG_CONCURRENCY) stay the platform's
own ceiling: the smaller of the two applies.

Enforcement is atomic: the caller locks the organization's BillingAccount row
(`quota_lock`, SELECT ... FOR UPDATE) and only then counts and writes, so two
requests racing for the last slot run one after the other and the second sees the
first's row. A refusal is QuotaExceeded: HTTP 402 (Payment Required: a bigger plan
lifts it), code "quota_exceeded", a message naming the limit, the plan and the
numbers, and `limit`, `plan`, `allowed`, `used` beside the error in API bodies.

Where each limit is enforced:
- members: invitation acceptance (apps/tenancy/identity.py);
- workspaces and storage_gb (the disk allocated to workspaces): workspace create;
- concurrent_sandboxes and sandbox_hours (this month's sandbox seconds in the
  ledger's roll-ups): workspace create with start, and workspace start
  (apps/workspaces/services.py);
- concurrent_agent_runs: the agent pool's per-organization limit
  (apps/scheduling/limits.py); runs over it wait in line, they never fail;
- monthly_tokens: before every LLM call, in the gateway's budget path
  (apps/llm/budgets.py), against this month's roll-ups plus this process's unwritten
  usage; the written part is cached per process for BILLING_QUOTA_CACHE_SECONDS.

Alerts: when a use brings an organization to 50, 80 or 100 % of a limit (its
account's alert_thresholds) or of a monthly organization budget (apps/llm Budget),
one QuotaAlert row per limit, threshold and month is inserted in the use's
transaction; whoever inserts it sends the in-app notice (apps/notices, the
organization's schema) and, after commit, an email to the organization's owners.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import connection, transaction
from django.db.models import F, Sum
from django.utils import timezone
from django_tenants.utils import schema_context

from apps.billing.features import features_cache_clear
from apps.billing.models import BillingAccount, QuotaAlert
from apps.billing.plans import billing_account_for
from apps.core.errors import ServiceError
from apps.tenancy.models import Membership, Organization

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limit:
    key: str
    one: str  # "1 running sandbox"
    many: str  # "3 running sandboxes"
    monthly: bool = False
    remedy: str = ""


LIMITS: dict[str, Limit] = {
    limit.key: limit
    for limit in (
        Limit("members", "member", "members", remedy="Remove a member or upgrade the plan."),
        Limit("workspaces", "workspace", "workspaces", remedy="Destroy a workspace or upgrade the plan."),
        Limit(
            "concurrent_sandboxes",
            "running sandbox",
            "running sandboxes",
            remedy="Stop a workspace or upgrade the plan.",
        ),
        Limit("concurrent_agent_runs", "concurrent agent run", "concurrent agent runs"),
        Limit(
            "monthly_tokens",
            "LLM token a month",
            "LLM tokens a month",
            monthly=True,
            remedy="Wait for next month or upgrade the plan.",
        ),
        Limit(
            "sandbox_hours",
            "sandbox hour a month",
            "sandbox hours a month",
            monthly=True,
            remedy="Wait for next month or upgrade the plan.",
        ),
        Limit(
            "storage_gb",
            "GB of workspace storage",
            "GB of workspace storage",
            remedy="Destroy a workspace, give it less disk, or upgrade the plan.",
        ),
    )
}


class QuotaExceeded(ServiceError):
    status = 402
    code = "quota_exceeded"

    def __init__(self, message: str, *, limit: str, plan: str, allowed: float, used: float) -> None:
        super().__init__(message)
        self.limit = limit
        self.plan = plan
        self.allowed = allowed
        self.used = used

    @property
    def extra_body(self) -> dict[str, Any]:
        """Added to the API's error body beside {"error": {...}}."""
        return {
            "detail": self.message,
            "code": self.code,
            "limit": self.limit,
            "plan": self.plan,
            "allowed": _plain(self.allowed),
            "used": _plain(self.used),
        }


def _plain(number: float | Decimal) -> int | float:
    value = float(number)
    return int(value) if value == int(value) else round(value, 2)


def _number(number: float | Decimal) -> str:
    value = _plain(number)
    return f"{value:,}" if isinstance(value, int) else f"{value:,.2f}"


def _count(limit: Limit, number: float | Decimal) -> str:
    return f"{_number(number)} {limit.one if float(number) == 1 else limit.many}"


# --- effective limits -----------------------------------------------------------


def account_limits(account: BillingAccount) -> dict[str, float | None]:
    """Every limit key with its effective value (None: unlimited)."""
    plan_limits = account.plan.limits or {}
    overrides = account.limit_overrides or {}
    limits: dict[str, float | None] = {}
    for key in LIMITS:
        value = overrides[key] if key in overrides else plan_limits.get(key)
        limits[key] = None if value is None else float(value)
    return limits


def organization_limits(organization: Organization) -> dict[str, float | None]:
    return account_limits(billing_account_for(organization))


def quota_lock(organization: Organization) -> BillingAccount:
    """Lock the organization's billing account until the transaction ends (quota checks
    of one organization run one at a time) and return it with its plan."""
    if not connection.in_atomic_block:
        raise RuntimeError("quota_lock needs a transaction: the lock lasts until it ends")
    return billing_account_for(organization, lock=True)


def month_start(now: datetime | None = None) -> datetime:
    now = now or timezone.now()
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def quota_check(
    *,
    account: BillingAccount,
    organization: Organization,
    limit: str,
    used: float | Decimal,
    adding: float | Decimal = 1,
    verb: str = "has",
) -> None:
    """Refuse (QuotaExceeded) when `used` + `adding` goes over the limit; otherwise record
    any alert threshold the use reaches. `used` is counted by the caller under quota_lock."""
    info = LIMITS[limit]
    allowed = account_limits(account)[limit]
    if allowed is None:
        return
    after = float(used) + float(adding)
    # adding 0 asks "is any left?" (sandbox hours at a start): none left at the limit itself.
    if after > allowed or (not adding and float(used) >= allowed):
        month = " this month" if info.monthly else ""
        message = (
            f"The {account.plan.name} plan allows {_count(info, allowed)}; {organization.name}"
            f" {verb} {_number(used)}{month}. {info.remedy}"
        ).strip()
        raise QuotaExceeded(message, limit=limit, plan=account.plan.key, allowed=allowed, used=float(used))
    quota_alerts_record(organization=organization, account=account, limit=limit, used=after, allowed=allowed)


def platform_cap_then_plan(
    *,
    account: BillingAccount,
    organization: Organization,
    limit: str,
    used: int,
    cap: int,
    cap_error: ServiceError,
    verb: str = "has",
) -> None:
    """The smaller of the settings cap and the plan's limit decides: the cap's own error when
    the cap binds (the platform's ceiling, not the plan's), else the plan's QuotaExceeded."""
    allowed = account_limits(account)[limit]
    if used + 1 > cap and (allowed is None or cap <= allowed):
        raise cap_error
    quota_check(account=account, organization=organization, limit=limit, used=used, verb=verb)


# --- usage the limits are compared with -----------------------------------------


def members_count(organization: Organization) -> int:
    return Membership.objects.filter(organization=organization).count()


def sandbox_hours_used(organization: Organization, now: datetime | None = None) -> float:
    """This month's sandbox hours in the ledger's daily roll-ups (accounted sandbox time)."""
    from apps.billing.models import UsageDaily

    total = UsageDaily.objects.filter(
        organization=organization, kind="sandbox_seconds", day__gte=month_start(now).date()
    ).aggregate(total=Sum("quantity"))["total"]
    return float(total or 0) / 3600


def monthly_tokens_written(organization_id: int, now: datetime | None = None) -> int:
    """This month's LLM tokens (input, cached input included, and output) in the gateway's
    written daily roll-ups."""
    from apps.llm.models import UsageDaily as LlmUsageDaily

    total = LlmUsageDaily.objects.filter(
        organization_id=organization_id, day__gte=month_start(now).date()
    ).aggregate(total=Sum(F("input_tokens") + F("output_tokens")))["total"]
    return int(total or 0)


# --- the monthly token quota, before every LLM call -----------------------------


@dataclass
class _TokenState:
    expires: float
    month: date
    organization: Organization
    plan_name: str
    plan_key: str
    allowed: float | None
    written: int
    thresholds: tuple[int, ...]
    budgets: tuple[tuple[int, float, float], ...]  # (budget id, limit USD, spent USD) monthly, org-wide


_token_lock = threading.Lock()
_token_states: dict[int, _TokenState] = {}
# (organization, limit, threshold, month) alerts this process knows were recorded.
_alerted: set[tuple[int, str, int, date]] = set()


def quota_snapshots_clear(*, organization_id: int | None = None) -> None:
    """Forget this process's cached token-quota and feature readings (all, or one
    organization's): the plan or its overrides changed."""
    features_cache_clear(organization_id=organization_id)
    with _token_lock:
        if organization_id is None:
            _token_states.clear()
            _alerted.clear()
        else:
            _token_states.pop(organization_id, None)


def _token_state(organization_id: int) -> _TokenState | None:
    from apps.llm import selectors as llm_selectors
    from apps.llm.models import Budget

    now = timezone.now()
    with _token_lock:
        state = _token_states.get(organization_id)
    if state is not None and state.expires > time.monotonic() and state.month == month_start(now).date():
        return state
    organization = Organization.objects.filter(pk=organization_id).first()
    if organization is None:
        return None
    account = billing_account_for(organization)
    budgets = tuple(
        (
            budget.pk,
            float(budget.limit_usd),
            llm_selectors.budget_spent(
                organization_id=organization_id,
                budget=llm_selectors.BudgetInfo(
                    id=budget.pk,
                    scope=budget.scope,
                    api_key_id=budget.api_key_id,
                    run_id=budget.run_id,
                    period=budget.period,
                    limit_usd=float(budget.limit_usd),
                ),
                now=now,
            ),
        )
        for budget in Budget.objects.filter(
            organization_id=organization_id, scope=Budget.Scope.ORGANIZATION, period=Budget.Period.MONTH
        )
    )
    allowed = account_limits(account)["monthly_tokens"]
    state = _TokenState(
        expires=time.monotonic() + float(settings.BILLING_QUOTA_CACHE_SECONDS),
        month=month_start(now).date(),
        organization=organization,
        plan_name=account.plan.name,
        plan_key=account.plan.key,
        allowed=allowed,
        written=monthly_tokens_written(organization_id, now) if allowed is not None else 0,
        thresholds=tuple(sorted(int(t) for t in (account.alert_thresholds or []))),
        budgets=budgets,
    )
    with _token_lock:
        _token_states[organization_id] = state
    return state


def _fresh_state(organization_id: int) -> _TokenState | None:
    with _token_lock:
        state = _token_states.get(organization_id)
    if state is None or state.expires <= time.monotonic() or state.month != month_start().date():
        return None
    return state


def token_quota_check(*, organization_id: int, meter: Any, cached_only: bool = False) -> bool:
    """Before an LLM call: refuse it (QuotaExceeded) when this month's tokens (written, plus
    the `meter`'s unwritten ones in this process) have reached the plan's monthly_tokens, and
    record alerts for that quota and the organization's monthly budgets.

    With `cached_only` nothing touches the database (the gateway's event loop): False means
    "undecided, call again without it" (no fresh reading, or an alert to record)."""
    state = _fresh_state(organization_id)
    if state is None:
        if cached_only:
            return False
        state = _token_state(organization_id)
        if state is None:
            return True
    info = LIMITS["monthly_tokens"]
    due: list[tuple[str, float, float]] = []
    used = 0
    if state.allowed is not None:
        used = state.written + int(meter.pending_tokens(organization_id=organization_id))
        due.append(("monthly_tokens", used, state.allowed))
    if state.budgets:
        pending_cost = float(meter.pending_cost(organization_id=organization_id))
        due += [
            (f"budget:{budget_id}", spent + pending_cost, limit) for budget_id, limit, spent in state.budgets
        ]
    due = [item for item in due if _alert_due(state, *item)]
    if due:
        if cached_only:
            return False
        # Recorded (and committed) even when the call is refused below: the 100 % alert.
        with transaction.atomic():
            for limit, used_now, allowed in due:
                quota_alerts_record(
                    organization=state.organization,
                    account=None,
                    limit=limit,
                    used=used_now,
                    allowed=allowed,
                    thresholds=state.thresholds,
                    plan_name=state.plan_name,
                )
    if state.allowed is not None and used >= state.allowed:
        raise QuotaExceeded(
            f"The {state.plan_name} plan allows {_count(info, state.allowed)};"
            f" {state.organization.name} has used {_number(used)} this month. {info.remedy}",
            limit="monthly_tokens",
            plan=state.plan_key,
            allowed=state.allowed,
            used=used,
        )
    return True


def _alert_due(state: _TokenState, limit: str, used: float, allowed: float) -> bool:
    """Only a threshold this process has not seen recorded costs a database write."""
    if allowed <= 0:
        return False
    percent = used * 100 / allowed
    with _token_lock:
        return any(
            percent >= threshold and (state.organization.pk, limit, threshold, state.month) not in _alerted
            for threshold in state.thresholds
        )


# --- alerts ---------------------------------------------------------------------


def _money(usd: float) -> str:
    return f"{usd:,.2f}" if usd >= 1 else f"{usd:.4g}"


def _limit_words(limit: str, allowed: float) -> str:
    if limit.startswith("budget:"):
        return f"its monthly LLM budget of {_money(allowed)} USD"
    return f"its limit of {_count(LIMITS[limit], allowed)}"


def quota_alerts_record(
    *,
    organization: Organization,
    account: BillingAccount | None,
    limit: str,
    used: float,
    allowed: float,
    thresholds: tuple[int, ...] | None = None,
    plan_name: str = "",
) -> list[int]:
    """Insert the QuotaAlert of every threshold `used` reaches this month that has none yet;
    for the highest new one, an in-app notice now and an email to the owners on commit.
    The thresholds newly recorded, in order."""
    if allowed <= 0:
        return []
    if thresholds is None:
        thresholds = tuple(sorted(int(t) for t in ((account.alert_thresholds if account else None) or [])))
    percent = used * 100 / allowed
    reached = [t for t in thresholds if percent >= t]
    if not reached:
        return []
    period = month_start().date()
    new: list[int] = []
    with connection.cursor() as cursor:
        for threshold in reached:
            cursor.execute(
                f"INSERT INTO {QuotaAlert._meta.db_table}"  # noqa: S608 (the model's table)
                ' (organization_id, "limit", threshold, period_start, created_at)'
                " VALUES (%s, %s, %s, %s, now()) ON CONFLICT DO NOTHING RETURNING threshold",
                [organization.pk, limit, threshold, period],
            )
            if cursor.fetchone() is not None:
                new.append(threshold)
    with _token_lock:
        # Last month's entries can never match again: drop them rather than keep them forever.
        _alerted.difference_update([entry for entry in _alerted if entry[3] != period])
        for threshold in reached:
            _alerted.add((organization.pk, limit, threshold, period))
    if new:
        _alert_send(
            organization=organization,
            limit=limit,
            threshold=new[-1],
            used=used,
            allowed=allowed,
            plan_name=plan_name or (account.plan.name if account else ""),
        )
    return new


def _alert_send(
    *, organization: Organization, limit: str, threshold: int, used: float, allowed: float, plan_name: str
) -> None:
    from apps.notices.models import Notice
    from apps.notices.services import notice_create

    what = _limit_words(limit, allowed)
    if threshold >= 100:
        title = f"{organization.name} has reached {what}"
    else:
        title = f"{organization.name} has used {threshold}% of {what}"
    plan = f" on the {plan_name} plan" if plan_name else ""
    shown = _money if limit.startswith("budget:") else _number
    body = (
        f"Now at {shown(used)} of {shown(allowed)}{plan}. "
        + ("Further use is refused until the limit is raised or the period ends." if threshold >= 100 else "")
    ).strip()
    level = Notice.Level.WARNING if threshold >= 80 else Notice.Level.INFO
    with schema_context(organization.schema_name):
        notice_create(title=title, body=body, level=level)
    owners = list(
        Membership.objects.filter(organization=organization, role=Membership.Role.OWNER).values_list(
            "user__email", flat=True
        )
    )
    if owners:
        transaction.on_commit(lambda: _email_owners(owners, title, body))
    logger.info("Quota alert for %s: %s at %s%%", organization.schema_name, limit, threshold)


def _email_owners(owners: list[str], title: str, body: str) -> None:
    # After commit: the use it reports has happened; a mail server failing must not
    # turn the request that made it into an error.
    try:
        send_mail(
            subject=f"[Agentyard] {title}",
            message=f"{title}.\n\n{body}\n",
            from_email=settings.DEFAULT_FROM_EMAIL,
            recipient_list=owners,
        )
    except Exception:
        logger.exception("Could not email the quota alert %r to %s", title, owners)
