"""Billing's tables, all in the public schema (apps.billing is a shared app).

Every row that belongs to an organization carries its foreign key, and every
read filters by it (apps/billing/selectors.py).

- Plan: what an organization may use and what it pays. The catalogue (free,
  pay-as-you-go, team, business, reserved) is seeded by a data migration; staff
  make custom plans for one organization in the back office. `features` lists
  feature keys (apps/billing/features.py), `limits` the numeric limits (a missing
  or null value is unlimited), `included` the monthly quantity of each usage kind
  the fee covers and `unit_prices` what each unit beyond it costs.
- BillingAccount: one per organization (made on first use): its plan, the Stripe
  customer and subscription mirrored from webhooks, and staff overrides of the
  plan's limits and features.
- UsageRecord: the ledger, append-only (PostgreSQL refuses UPDATE; a DELETE only
  goes through together with its organization). One row per metered event, written
  in the same transaction as the work it measures; the idempotency key makes a
  retried write a no-op.
- UsageHourly / UsageDaily: roll-ups of the ledger for fast reads (pages, Stripe
  meter reports, quota checks), upserted in the ledger row's transaction.
- QuotaAlert: the 50/80/100 % alert sent for a limit in one period; its unique key
  is what makes an alert go out once.
- StripeEvent: every webhook event received, deduplicated by Stripe's event id;
  processed in a Celery task.
- Invoice: Stripe's invoices mirrored for display.
- UsageReport: one batch of usage sent to a Stripe Billing Meter, with its
  idempotency key, retried with backoff until Stripe takes it.
"""

from __future__ import annotations

from decimal import Decimal
from typing import ClassVar

from django.db import models

from apps.tenancy.models import Organization

# The numeric limits a plan can set (the keys of Plan.limits and
# BillingAccount.limit_overrides).
LIMIT_KEYS = (
    "members",
    "workspaces",
    "concurrent_sandboxes",
    "concurrent_agent_runs",
    "monthly_tokens",
    "sandbox_hours",
    "storage_gb",
)


def default_alert_thresholds() -> list[int]:
    return [50, 80, 100]


class Plan(models.Model):
    class Kind(models.TextChoices):
        FREE = "free", "Free"
        PAYG = "payg", "Pay as you go"
        SUBSCRIPTION = "subscription", "Subscription"
        RESERVED = "reserved", "Reserved capacity"
        CUSTOM = "custom", "Custom"

    key = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    description = models.TextField(blank=True)
    # US dollars per month; for the reserved kind the prepaid monthly minimum.
    monthly_fee = models.DecimalField(max_digits=12, decimal_places=2, default=Decimal(0))
    features = models.JSONField(default=list, blank=True)
    limits = models.JSONField(default=dict, blank=True)
    # {usage kind: monthly quantity the fee covers}
    included = models.JSONField(default=dict, blank=True)
    # {usage kind: US dollars per unit beyond what is included}
    unit_prices = models.JSONField(default=dict, blank=True)
    stripe_price_id = models.CharField(max_length=100, blank=True)  # base fee; blank for free/payg
    public = models.BooleanField(default=True)  # offered on the plans page
    # A custom plan made for one organization; null for the catalogue's plans.
    organization = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.CASCADE, related_name="custom_plans"
    )
    position = models.PositiveIntegerField(default=0)
    archived = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering: ClassVar[list[str]] = ["position", "key"]

    def __str__(self) -> str:
        return self.name


class BillingAccount(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        TRIALING = "trialing", "Trialing"
        PAST_DUE = "past_due", "Past due"
        CANCELED = "canceled", "Canceled"
        INCOMPLETE = "incomplete", "Incomplete"

    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, related_name="billing_account"
    )
    # PROTECT: a plan in use is archived, never deleted.
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="accounts")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.ACTIVE)
    stripe_customer_id = models.CharField(max_length=100, blank=True, db_index=True)
    stripe_subscription_id = models.CharField(max_length=100, blank=True, db_index=True)
    # The Stripe time (object `created` or event time) of the last change applied,
    # so an older event arriving late does not undo a newer one.
    subscription_version = models.BigIntegerField(default=0)
    current_period_start = models.DateTimeField(null=True, blank=True)
    current_period_end = models.DateTimeField(null=True, blank=True)
    cancel_at_period_end = models.BooleanField(default=False)
    # Staff overrides: {limit key: number or null (unlimited)}, {feature key: bool}.
    limit_overrides = models.JSONField(default=dict, blank=True)
    feature_overrides = models.JSONField(default=dict, blank=True)
    alert_thresholds = models.JSONField(default=default_alert_thresholds, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"billing account of {self.organization_id} ({self.plan_id})"


class UsageKind(models.TextChoices):
    LLM_INPUT_TOKENS = "llm_input_tokens", "LLM input tokens"
    LLM_OUTPUT_TOKENS = "llm_output_tokens", "LLM output tokens"
    LLM_CACHED_TOKENS = "llm_cached_tokens", "LLM cached input tokens"
    SANDBOX_SECONDS = "sandbox_seconds", "Sandbox seconds"
    STORAGE_GB_HOURS = "storage_gb_hours", "Storage GB-hours"


class UsageUnit(models.TextChoices):
    TOKEN = "token", "token"
    SECOND = "second", "second"
    GB_HOUR = "GB-hour", "GB-hour"


class UsageSource(models.TextChoices):
    AGENT_RUN = "agent_run", "Agent run"
    API_KEY = "api_key", "API key"
    WORKSPACE = "workspace", "Workspace"
    USER = "user", "User"
    SYSTEM = "system", "System"


class UsageRecord(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=30, choices=UsageKind.choices)
    quantity = models.DecimalField(max_digits=20, decimal_places=6)
    unit = models.CharField(max_length=10, choices=UsageUnit.choices)
    unit_price = models.DecimalField(max_digits=16, decimal_places=10, default=Decimal(0))
    amount = models.DecimalField(max_digits=16, decimal_places=8, default=Decimal(0))
    model = models.CharField(max_length=100, blank=True)  # LLM usage only
    source_type = models.CharField(max_length=20, choices=UsageSource.choices)
    source_id = models.CharField(max_length=64, blank=True)
    user_id = models.BigIntegerField(null=True, blank=True)
    idempotency_key = models.CharField(max_length=200, unique=True)
    occurred_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes: ClassVar[list[models.Index]] = [
            models.Index(fields=["organization", "occurred_at"], name="billing_usage_org_time"),
        ]

    def __str__(self) -> str:
        return f"{self.quantity} {self.unit} of {self.kind} for {self.organization_id}"


class UsageRollup(models.Model):
    """Shared columns; model and source_id are blank, never null, so the unique key
    holds for every row."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=30, choices=UsageKind.choices)
    model = models.CharField(max_length=100, blank=True, default="")
    source_type = models.CharField(max_length=20, choices=UsageSource.choices)
    source_id = models.CharField(max_length=64, blank=True, default="")
    quantity = models.DecimalField(max_digits=24, decimal_places=6, default=Decimal(0))
    amount = models.DecimalField(max_digits=20, decimal_places=8, default=Decimal(0))

    class Meta:
        abstract = True


class UsageHourly(UsageRollup):
    hour = models.DateTimeField()

    class Meta:
        constraints: ClassVar[list[models.BaseConstraint]] = [
            models.UniqueConstraint(
                fields=["organization", "hour", "kind", "model", "source_type", "source_id"],
                name="billing_usage_hourly_key",
            )
        ]
        indexes: ClassVar[list[models.Index]] = [
            models.Index(fields=["organization", "hour"], name="billing_usage_hourly_org"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} at {self.hour:%Y-%m-%d %H}:00 for {self.organization_id}"


class UsageDaily(UsageRollup):
    day = models.DateField()

    class Meta:
        constraints: ClassVar[list[models.BaseConstraint]] = [
            models.UniqueConstraint(
                fields=["organization", "day", "kind", "model", "source_type", "source_id"],
                name="billing_usage_daily_key",
            )
        ]
        indexes: ClassVar[list[models.Index]] = [
            models.Index(fields=["organization", "day"], name="billing_usage_daily_org"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} on {self.day} for {self.organization_id}"


class QuotaAlert(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="quota_alerts")
    # A limit key (LIMIT_KEYS) or "budget" for the LLM money budget.
    limit = models.CharField(max_length=40)
    threshold = models.PositiveSmallIntegerField()  # percent
    period_start = models.DateField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints: ClassVar[list[models.BaseConstraint]] = [
            models.UniqueConstraint(
                fields=["organization", "limit", "threshold", "period_start"], name="billing_quota_alert_once"
            )
        ]

    def __str__(self) -> str:
        return f"{self.limit} at {self.threshold}% from {self.period_start} for {self.organization_id}"


class StripeEvent(models.Model):
    event_id = models.CharField(max_length=100, unique=True)
    type = models.CharField(max_length=100)
    object_id = models.CharField(max_length=100, blank=True)
    created = models.BigIntegerField()  # the event's Unix timestamp
    payload = models.JSONField()
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    outcome = models.TextField(blank=True)

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"


class Invoice(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="invoices")
    stripe_invoice_id = models.CharField(max_length=100, unique=True)
    number = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=30)
    currency = models.CharField(max_length=10, default="usd")
    amount_due = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal(0))
    amount_paid = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal(0))
    total = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal(0))
    period_start = models.DateTimeField(null=True, blank=True)
    period_end = models.DateTimeField(null=True, blank=True)
    hosted_invoice_url = models.URLField(max_length=1000, blank=True)
    invoice_pdf = models.URLField(max_length=1000, blank=True)
    created = models.DateTimeField()
    # The Stripe time of the version mirrored, so older events do not overwrite newer.
    stripe_version = models.BigIntegerField(default=0)

    class Meta:
        ordering: ClassVar[list[str]] = ["-created"]

    def __str__(self) -> str:
        return f"invoice {self.number or self.stripe_invoice_id} for {self.organization_id}"


class UsageReport(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=30, choices=UsageKind.choices)
    event_name = models.CharField(max_length=100)  # the Stripe meter's event_name
    quantity = models.DecimalField(max_digits=24, decimal_places=6)
    idempotency_key = models.CharField(max_length=200, unique=True)
    # What the report covers, e.g. {"hour": "2026-01-01T10:00:00Z"}.
    covers = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes: ClassVar[list[models.Index]] = [
            models.Index(fields=["status", "next_attempt_at"], name="billing_usage_report_due"),
        ]

    def __str__(self) -> str:
        return f"{self.quantity} {self.kind} report for {self.organization_id} ({self.status})"
