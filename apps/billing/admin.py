"""Billing in the back office (public host, platform staff only).

- Plans: the catalogue and custom plans (for one organization, not public). Staff edit
  prices, features, limits and included usage, and archive a plan rather than delete it
  (accounts keep it; nobody can choose it any more). A plan's key is fixed once made:
  Stripe finds its prices by it.
- Billing accounts: per organization, its plan and staff overrides of limits and
  features. Changes go through apps/billing/services.py (plan_change,
  account_overrides_set), so they are checked, audited and reach the quota checks at
  once; a plan the organization's usage does not fit is refused on the form, naming
  what to reduce. Stripe's fields are read-only: webhooks keep them.
- Usage per organization: the daily roll-ups of the ledger, read-only, and this
  month's usage by kind on each account's page. Invoices, Stripe events, usage reports
  and quota alerts are listed read-only, to answer "what happened".

Every change is also written to the audit log (AuditedModelAdmin)."""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join

from apps.billing import selectors, services
from apps.billing.features import FEATURES
from apps.billing.models import (
    LIMIT_KEYS,
    BillingAccount,
    Invoice,
    Plan,
    QuotaAlert,
    StripeEvent,
    UsageDaily,
    UsageKind,
    UsageReport,
)
from apps.billing.quotas import account_limits
from apps.llm.pages import money
from apps.tenancy.admin import AuditedModelAdmin, ModelAdmin
from apps.tenancy.audit import Actor

FEATURE_CHOICES = [(key, f"{key}: {description}") for key, description in FEATURES.items()]


def _json_object(value: Any, what: str) -> dict[str, Any]:
    if value in (None, ""):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise forms.ValidationError(f"Give {what} as a JSON object.") from None
    if not isinstance(value, dict):
        raise forms.ValidationError(f"Give {what} as a JSON object.")
    return value


def _limits(value: Any, what: str) -> dict[str, int | None]:
    """{limit key: whole number >= 0, or null for unlimited}."""
    raw = _json_object(value, what)
    cleaned: dict[str, int | None] = {}
    for key, number in raw.items():
        if key not in LIMIT_KEYS:
            raise forms.ValidationError(f"Unknown limit {key!r}; the limits are {', '.join(LIMIT_KEYS)}.")
        if number is None:
            cleaned[key] = None
            continue
        if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= 10**15:
            raise forms.ValidationError(
                f"{key} must be a whole number from 0 to 10^15, or null for unlimited."
            )
        cleaned[key] = number
    return cleaned


def _quantities(value: Any, what: str) -> dict[str, str]:
    """{usage kind: number >= 0}, kept as strings so prices stay exact."""
    raw = _json_object(value, what)
    cleaned: dict[str, str] = {}
    for kind, number in raw.items():
        if kind not in UsageKind.values:
            raise forms.ValidationError(
                f"Unknown usage kind {kind!r}; the kinds are {', '.join(UsageKind.values)}."
            )
        try:
            amount = Decimal(str(number))
        except InvalidOperation:
            amount = Decimal("NaN")
        if isinstance(number, bool) or not amount.is_finite() or amount < 0:
            raise forms.ValidationError(f"{kind} must be a number of at least 0.")
        cleaned[kind] = str(number)
    return cleaned


class PlanForm(forms.ModelForm):  # type: ignore[type-arg]
    features = forms.MultipleChoiceField(
        choices=FEATURE_CHOICES, required=False, widget=forms.CheckboxSelectMultiple
    )
    limits = forms.JSONField(
        required=False,
        help_text='e.g. {"members": 25, "workspaces": 50, "monthly_tokens": null}; a missing or null'
        f" limit is unlimited. Keys: {', '.join(LIMIT_KEYS)}.",
    )
    included = forms.JSONField(
        required=False,
        help_text='Monthly quantity the fee covers, e.g. {"llm_input_tokens": 10000000}.'
        f" Kinds: {', '.join(UsageKind.values)}.",
    )
    unit_prices = forms.JSONField(
        required=False,
        help_text='US dollars per unit beyond what is included, e.g. {"sandbox_seconds": "0.00003"}.',
    )

    class Meta:
        model = Plan
        fields = (
            "key",
            "name",
            "kind",
            "description",
            "monthly_fee",
            "features",
            "limits",
            "included",
            "unit_prices",
            "stripe_price_id",
            "public",
            "organization",
            "position",
            "archived",
        )

    def clean_limits(self) -> dict[str, int | None]:
        return _limits(self.cleaned_data.get("limits"), "the limits")

    def clean_included(self) -> dict[str, str]:
        return _quantities(self.cleaned_data.get("included"), "the included usage")

    def clean_unit_prices(self) -> dict[str, str]:
        return _quantities(self.cleaned_data.get("unit_prices"), "the unit prices")

    def clean_monthly_fee(self) -> Decimal:
        fee = self.cleaned_data["monthly_fee"]
        if fee is None or fee < 0:
            raise forms.ValidationError("The monthly fee cannot be negative.")
        return Decimal(fee)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("organization") is not None and data.get("public"):
            self.add_error("public", "A plan made for one organization is not public.")
        if data.get("kind") == Plan.Kind.CUSTOM and data.get("public"):
            self.add_error("public", "Custom plans are offered to their organization only, not publicly.")
        return data


@admin.register(Plan)
class PlanAdmin(AuditedModelAdmin[Plan]):
    form = PlanForm
    list_display = (
        "key",
        "name",
        "kind",
        "fee",
        "public",
        "organization",
        "archived",
        "position",
        "account_count",
    )
    list_filter = ("kind", "public", "archived")
    search_fields = ("key", "name", "organization__name", "organization__slug")
    list_select_related = ("organization",)
    ordering = ("archived", "position", "key")
    actions = ("archive_selected", "unarchive_selected")
    audit_fields = (
        "name",
        "kind",
        "monthly_fee",
        "features",
        "limits",
        "included",
        "unit_prices",
        "stripe_price_id",
        "public",
        "archived",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Plan]:
        return super().get_queryset(request).annotate(_accounts=Count("accounts"))

    @admin.display(description="Monthly fee", ordering="monthly_fee")
    def fee(self, plan: Plan) -> str:
        return money(plan.monthly_fee)

    @admin.display(description="Accounts", ordering="_accounts")
    def account_count(self, plan: Plan) -> int:
        return int(getattr(plan, "_accounts", 0))

    def get_readonly_fields(self, request: HttpRequest, obj: Plan | None = None) -> tuple[str, ...]:
        # Stripe finds a plan's prices by its key (lookup_key), and accounts point at the row.
        return ("key",) if obj is not None else ()

    def has_delete_permission(self, request: HttpRequest, obj: Plan | None = None) -> bool:
        return False  # accounts keep their plan: archive it instead

    @admin.action(
        description="Archive selected plans (nobody can choose them any more)", permissions=["change"]
    )
    def archive_selected(self, request: HttpRequest, queryset: QuerySet[Plan]) -> None:
        self._set_archived(request, queryset, archived=True)

    @admin.action(description="Offer selected plans again (unarchive)", permissions=["change"])
    def unarchive_selected(self, request: HttpRequest, queryset: QuerySet[Plan]) -> None:
        self._set_archived(request, queryset, archived=False)

    def _set_archived(self, request: HttpRequest, queryset: QuerySet[Plan], *, archived: bool) -> None:
        changed = 0
        for plan in queryset.filter(archived=not archived):
            plan.archived = archived
            plan.save(update_fields=["archived"])
            self.log_change(request, plan, [{"changed": {"fields": ["archived"]}}])
            changed += 1
        verb = "Archived" if archived else "Unarchived"
        self.message_user(request, f"{verb} {changed} plan{'s' if changed != 1 else ''}.")


class BillingAccountForm(forms.ModelForm):  # type: ignore[type-arg]
    limit_overrides = forms.JSONField(
        required=False,
        help_text="Replace the plan's limits for this organization, e.g."
        ' {"members": 100, "concurrent_sandboxes": null} (null: unlimited). {} for none.'
        f" Keys: {', '.join(LIMIT_KEYS)}.",
    )
    feature_overrides = forms.JSONField(
        required=False,
        help_text='Grant or withhold features, e.g. {"sso": true, "multi_agent": false}. {} for none.'
        f" Features: {', '.join(FEATURES)}.",
    )

    class Meta:
        model = BillingAccount
        fields = ("plan", "limit_overrides", "feature_overrides")

    def clean_limit_overrides(self) -> dict[str, int | None]:
        return _limits(self.cleaned_data.get("limit_overrides"), "the limit overrides")

    def clean_feature_overrides(self) -> dict[str, bool]:
        raw = _json_object(self.cleaned_data.get("feature_overrides"), "the feature overrides")
        for key, value in raw.items():
            if key not in FEATURES:
                raise forms.ValidationError(
                    f"Unknown feature {key!r}; the features are {', '.join(FEATURES)}."
                )
            if not isinstance(value, bool):
                raise forms.ValidationError(f"The {key} override must be true or false.")
        return raw

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        plan = data.get("plan")
        account = self.instance
        if (
            plan is None
            or account.pk is None
            or "limit_overrides" not in data
            or "feature_overrides" not in data
        ):
            return data
        if plan.organization_id is not None and plan.organization_id != account.organization_id:
            self.add_error("plan", f"{plan.name} was made for another organization.")
            return data
        # What the organization has must fit the plan with the overrides (the same check as a
        # downgrade by its own managers), or nothing is saved.
        problems = services.downgrade_problems(
            organization=account.organization,
            plan=plan,
            limit_overrides=data["limit_overrides"],
            feature_overrides=data["feature_overrides"],
        )
        for problem in problems:
            self.add_error("plan" if plan.pk != account.plan_id else "limit_overrides", problem["message"])
        return data


@admin.register(BillingAccount)
class BillingAccountAdmin(AuditedModelAdmin[BillingAccount]):
    form = BillingAccountForm
    list_display = (
        "organization",
        "plan",
        "status",
        "overridden",
        "stripe_customer_id",
        "current_period_end",
        "updated_at",
    )
    list_filter = ("status", "plan")
    search_fields = (
        "organization__name",
        "organization__slug",
        "stripe_customer_id",
        "stripe_subscription_id",
    )
    list_select_related = ("organization", "plan")
    ordering = ("organization__name",)
    readonly_fields = (
        "organization",
        "status",
        "effective_limits",
        "usage_this_month",
        "stripe_customer_id",
        "stripe_subscription_id",
        "current_period_start",
        "current_period_end",
        "cancel_at_period_end",
        "alert_thresholds",
        "updated_at",
    )
    fieldsets = (
        (None, {"fields": ("organization", "plan", "status")}),
        ("Staff overrides", {"fields": ("limit_overrides", "feature_overrides", "effective_limits")}),
        ("Usage", {"fields": ("usage_this_month",)}),
        (
            "Stripe (kept by webhooks)",
            {
                "fields": (
                    "stripe_customer_id",
                    "stripe_subscription_id",
                    "current_period_start",
                    "current_period_end",
                    "cancel_at_period_end",
                    "alert_thresholds",
                    "updated_at",
                )
            },
        ),
    )
    audit_fields = ("plan", "limit_overrides", "feature_overrides")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # made on first use for every organization

    def has_delete_permission(self, request: HttpRequest, obj: BillingAccount | None = None) -> bool:
        return False

    @admin.display(description="Overrides", boolean=True)
    def overridden(self, account: BillingAccount) -> bool:
        return bool(account.limit_overrides or account.feature_overrides)

    @admin.display(description="Effective limits (plan + overrides)")
    def effective_limits(self, account: BillingAccount) -> str:
        limits = account_limits(account)
        return format_html_join(
            ", ",
            "{}: {}",
            ((key, "unlimited" if value is None else f"{value:,.0f}") for key, value in limits.items()),
        )

    @admin.display(description="Usage this month (list prices)")
    def usage_this_month(self, account: BillingAccount) -> str:
        from django.utils import timezone

        days = timezone.now().day
        rows = selectors.usage_by_kind(
            organization=account.organization, usage=selectors.UsageFilter(days=days)
        )
        if not rows:
            return "none"
        return format_html(
            "{}",
            "; ".join(
                f"{row['kind']}: {row['quantity']:,.2f} {row['unit']} = {money(row['amount'])}"
                for row in rows
            ),
        )

    def save_model(self, request: HttpRequest, obj: BillingAccount, form: Any, change: bool) -> None:
        """Through the services, in the admin's transaction: checked, audited, and the quota
        checks' cached readings dropped."""
        actor = Actor.from_request(request)
        current = BillingAccount.objects.select_related("plan").get(pk=obj.pk)
        request._audit_before = {  # type: ignore[attr-defined]
            "plan": current.plan.key,
            "limit_overrides": current.limit_overrides,
            "feature_overrides": current.feature_overrides,
        }
        services.account_overrides_set(
            actor=actor,
            organization=obj.organization,
            limit_overrides=form.cleaned_data["limit_overrides"],
            feature_overrides=form.cleaned_data["feature_overrides"],
        )
        if form.cleaned_data["plan"].pk != current.plan_id:
            # The form checked the usage against this plan and the new overrides.
            services.plan_change(
                actor=actor,
                organization=obj.organization,
                plan=form.cleaned_data["plan"],
                check_usage=False,
                by_staff=True,
            )
        obj.refresh_from_db()


class ReadOnlyAdmin(ModelAdmin[Any]):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(UsageDaily)
class UsageDailyAdmin(ReadOnlyAdmin):
    """Usage per organization: the ledger's daily roll-ups (written by the ledger only)."""

    list_display = ("day", "organization", "kind", "model", "source_type", "source_id", "quantity", "cost")
    list_filter = ("kind", "source_type", "day")
    search_fields = ("organization__name", "organization__slug", "model", "source_id")
    list_select_related = ("organization",)
    date_hierarchy = "day"
    ordering = ("-day", "organization__name", "kind")

    @admin.display(description="Amount", ordering="amount")
    def cost(self, row: UsageDaily) -> str:
        return money(row.amount)


@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyAdmin):
    list_display = ("number", "organization", "status", "total", "amount_due", "amount_paid", "created")
    list_filter = ("status",)
    search_fields = ("number", "stripe_invoice_id", "organization__name", "organization__slug")
    list_select_related = ("organization",)
    date_hierarchy = "created"


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdmin):
    list_display = ("event_id", "type", "object_id", "received_at", "processed_at", "outcome")
    list_filter = ("type",)
    search_fields = ("event_id", "object_id")
    date_hierarchy = "received_at"


@admin.register(UsageReport)
class UsageReportAdmin(ReadOnlyAdmin):
    list_display = (
        "organization",
        "kind",
        "quantity",
        "status",
        "attempts",
        "next_attempt_at",
        "sent_at",
        "last_error",
    )
    list_filter = ("status", "kind")
    search_fields = ("organization__name", "idempotency_key")
    list_select_related = ("organization",)


@admin.register(QuotaAlert)
class QuotaAlertAdmin(ReadOnlyAdmin):
    list_display = ("organization", "limit", "threshold", "period_start", "created_at")
    list_filter = ("limit", "threshold")
    search_fields = ("organization__name", "organization__slug")
    list_select_related = ("organization",)
