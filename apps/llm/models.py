"""The gateway's tables, all in the public schema (apps.llm is a shared app).

Every row that belongs to an organization carries its foreign key, and every
query on these tables filters by it (apps/llm/selectors.py).

- LlmModel: the catalog, shipped in apps/llm/catalog.py and synced by a data
  migration and `manage.py llm_catalog_sync`.
- ModelAccess: an organization's switch for a model (absent: the catalog's default).
- ProviderCredential: an organization's own API key (Fernet-encrypted) and base URL
  for a provider kind; platform defaults come from settings only, never the table.
- RoutingPolicy: an organization's preferred models, price ceiling and fallbacks.
- Budget: a spending limit for an organization, one API key or one agent run.
- UsageHourly / UsageDaily: metering roll-ups, written in batches. There is no
  per-call table: the hourly rows are pruned after LLM_USAGE_HOURLY_RETENTION_DAYS,
  the daily rows stay (one row per organization, day, model, user, key and run).
"""

from __future__ import annotations

from decimal import Decimal

from django.db import models

from apps.tenancy.models import Organization


class LlmModel(models.Model):
    name = models.CharField(max_length=100, unique=True)  # ours, e.g. "gpt-4o-mini"
    provider = models.CharField(max_length=50)  # a provider kind in the registry
    provider_model = models.CharField(max_length=200)  # the provider's name for it
    description = models.CharField(max_length=300, blank=True)
    context_window = models.PositiveIntegerField()
    max_output_tokens = models.PositiveIntegerField(default=4096)
    supports_tools = models.BooleanField(default=False)  # natively; others get emulation
    supports_vision = models.BooleanField(default=False)
    supports_json = models.BooleanField(default=False)
    supports_embeddings = models.BooleanField(default=False)  # an embedding model
    # US dollars per million tokens.
    input_price = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal(0))
    output_price = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal(0))
    cached_input_price = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal(0))
    # "small" or "large": what the `auto` model picks between.
    tier = models.CharField(max_length=10, default="small")
    enabled_by_default = models.BooleanField(default=False)
    # Ordered catalog names to try when this one fails or the prompt does not fit.
    fallbacks = models.JSONField(default=list, blank=True)
    # False: removed from the shipped catalog (kept so usage rows keep their name).
    listed = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ModelAccess(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="llm_model_access")
    model = models.ForeignKey(LlmModel, on_delete=models.CASCADE, related_name="access")
    enabled = models.BooleanField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "model"], name="llm_access_unique")]

    def __str__(self) -> str:
        return f"{self.model_id} for {self.organization_id}: {'on' if self.enabled else 'off'}"


class ProviderCredential(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="llm_credentials")
    provider = models.CharField(max_length=50)
    api_key_encrypted = models.TextField(blank=True)
    api_key_hint = models.CharField(max_length=12, blank=True)  # the last characters, for the page
    base_url = models.URLField(max_length=500, blank=True)
    # openai_compatible only: how this server differs from OpenAI's API (its `server`
    # preset and per-option overrides; apps/llm/providers/openai_compatible.py).
    options = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "provider"], name="llm_credential_unique")
        ]

    def __str__(self) -> str:
        return f"{self.provider} for {self.organization_id}"


class RoutingPolicy(models.Model):
    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, related_name="llm_routing_policy"
    )
    # Catalog names, best first: `auto` and the router prefer these among what fits.
    preferred_models = models.JSONField(default=list, blank=True)
    # Models whose output price per million tokens is above this are not used.
    max_output_price = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    # {"model": ["fallback", ...]}: replaces the catalog's chain for this organization.
    fallbacks = models.JSONField(default=dict, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"routing policy of {self.organization_id}"


class Budget(models.Model):
    class Scope(models.TextChoices):
        ORGANIZATION = "organization"
        API_KEY = "api_key"
        RUN = "run"

    class Period(models.TextChoices):
        DAY = "day"
        MONTH = "month"
        TOTAL = "total"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="llm_budgets")
    scope = models.CharField(max_length=20, choices=Scope.choices)
    api_key_id = models.BigIntegerField(default=0)  # scope api_key
    run_id = models.CharField(max_length=64, blank=True)  # scope run
    period = models.CharField(max_length=10, choices=Period.choices, default=Period.MONTH)
    limit_usd = models.DecimalField(max_digits=12, decimal_places=4)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "scope", "api_key_id", "run_id", "period"], name="llm_budget_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.scope} budget {self.limit_usd} USD per {self.period} for {self.organization_id}"


class UsageRollup(models.Model):
    """Shared columns. user_id and api_key_id are plain numbers (0: none), not foreign
    keys, so usage survives the person or key and the roll-up key has no NULLs."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    model = models.CharField(max_length=100)
    provider = models.CharField(max_length=50)
    user_id = models.BigIntegerField(default=0)
    api_key_id = models.BigIntegerField(default=0)
    run_id = models.CharField(max_length=64, default="", blank=True)
    requests = models.BigIntegerField(default=0)  # answered calls, cache hits included
    cache_hits = models.BigIntegerField(default=0)
    failures = models.BigIntegerField(default=0)  # calls that failed: counted, never billed
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cached_tokens = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=16, decimal_places=8, default=Decimal(0))
    latency_ms_total = models.BigIntegerField(default=0)

    class Meta:
        abstract = True


class UsageHourly(UsageRollup):
    hour = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "hour", "model", "user_id", "api_key_id", "run_id"],
                name="llm_usage_hourly_key",
            )
        ]
        indexes = [models.Index(fields=["organization", "hour"], name="llm_usage_hourly_org")]

    def __str__(self) -> str:
        return f"{self.model} at {self.hour:%Y-%m-%d %H}:00 for {self.organization_id}"


class UsageDaily(UsageRollup):
    day = models.DateField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "day", "model", "user_id", "api_key_id", "run_id"],
                name="llm_usage_daily_key",
            )
        ]
        indexes = [models.Index(fields=["organization", "day"], name="llm_usage_daily_org")]

    def __str__(self) -> str:
        return f"{self.model} on {self.day} for {self.organization_id}"
