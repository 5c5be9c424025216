"""Reads of the gateway's tables. Every query on an organization's rows filters by it.

The gateway reads the catalog and an organization's settings (access, credentials,
routing policy, budgets) on every call, so it keeps in-process snapshots: the
catalog for LLM_CATALOG_CACHE_SECONDS (default 30), an organization's settings
for LLM_CONFIG_CACHE_SECONDS (default 5). The services that change them drop this
process's snapshot at once; other processes see the change within those seconds."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import Sum
from django.utils import timezone

from apps.accounts.models import User
from apps.llm.credentials import (
    BASE_URL_REQUIRED,
    KEYLESS_PROVIDERS,
    ResolvedCredential,
    api_key_decrypt,
    platform_credential,
)
from apps.llm.models import Budget, LlmModel, ModelAccess, ProviderCredential, RoutingPolicy, UsageDaily
from apps.llm.providers.registry import provider_kinds
from apps.llm.types import Usage
from apps.tenancy.models import Organization

# Provider kind -> what writing a prompt-cache entry costs over the input price, as a
# fraction of it (Anthropic's 5-minute cache: 1.25x; OpenAI and Gemini charge none).
CACHE_WRITE_PREMIUM: dict[str, float] = {"anthropic": 0.25}


@dataclass(frozen=True)
class ModelInfo:
    name: str
    provider: str
    provider_model: str
    context_window: int
    max_output_tokens: int
    tools: bool
    vision: bool
    json: bool
    embeddings: bool
    input_price: float  # USD per million tokens
    output_price: float
    cached_input_price: float
    tier: str
    enabled_by_default: bool
    fallbacks: tuple[str, ...]
    description: str = ""

    def cost(self, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> float:
        uncached = max(input_tokens - cached_tokens, 0)
        return (
            uncached * self.input_price
            + cached_tokens * self.cached_input_price
            + output_tokens * self.output_price
        ) / 1_000_000

    def usage_cost(self, usage: Usage) -> float:
        """What a call's usage costs: `cost`, plus the provider's premium on the tokens it
        wrote into its prompt cache (Anthropic: 25% over the input price, its 5-minute cache)."""
        premium = CACHE_WRITE_PREMIUM.get(self.provider, 0.0)
        written = usage.cache_write_tokens * self.input_price * premium / 1_000_000
        return self.cost(usage.input_tokens, usage.output_tokens, usage.cached_tokens) + written

    def as_dict(self, *, enabled: bool) -> dict[str, Any]:
        return {
            "name": self.name,
            "provider": self.provider,
            "provider_model": self.provider_model,
            "description": self.description,
            "context_window": self.context_window,
            "max_output_tokens": self.max_output_tokens,
            "capabilities": {
                "tools": self.tools,
                "vision": self.vision,
                "json": self.json,
                "embeddings": self.embeddings,
            },
            "prices": {
                "input_per_million": self.input_price,
                "output_per_million": self.output_price,
                "cached_input_per_million": self.cached_input_price,
            },
            "tier": self.tier,
            "fallbacks": list(self.fallbacks),
            "enabled": enabled,
        }


@dataclass(frozen=True)
class BudgetInfo:
    id: int
    scope: str
    api_key_id: int
    run_id: str
    period: str
    limit_usd: float


@dataclass(frozen=True)
class OrganizationConfig:
    organization_id: int
    access: dict[str, bool]  # model name -> enabled, where the organization chose
    credentials: dict[str, ResolvedCredential]  # provider -> the organization's own
    preferred_models: tuple[str, ...] = ()
    max_output_price: float | None = None
    fallbacks: dict[str, tuple[str, ...]] = field(default_factory=dict)
    budgets: tuple[BudgetInfo, ...] = ()

    def enabled(self, model: ModelInfo) -> bool:
        return self.access.get(model.name, model.enabled_by_default)

    def credential(self, provider: str) -> ResolvedCredential | None:
        """The organization's own, else the platform's; None when there is none to use."""
        own = self.credentials.get(provider)
        if own is not None:
            if provider in BASE_URL_REQUIRED and not own.base_url:
                return None
            return own
        if provider in KEYLESS_PROVIDERS:
            return ResolvedCredential(provider=provider, api_key="", base_url="", source="none")
        return platform_credential(provider)

    def fallbacks_for(self, model: ModelInfo) -> tuple[str, ...]:
        return self.fallbacks.get(model.name, model.fallbacks)


def _model_info(row: LlmModel) -> ModelInfo:
    return ModelInfo(
        name=row.name,
        provider=row.provider,
        provider_model=row.provider_model,
        context_window=row.context_window,
        max_output_tokens=row.max_output_tokens,
        tools=row.supports_tools,
        vision=row.supports_vision,
        json=row.supports_json,
        embeddings=row.supports_embeddings,
        input_price=float(row.input_price),
        output_price=float(row.output_price),
        cached_input_price=float(row.cached_input_price),
        tier=row.tier,
        enabled_by_default=row.enabled_by_default,
        fallbacks=tuple(str(name) for name in row.fallbacks or ()),
        description=row.description,
    )


_lock = threading.Lock()
_catalog: tuple[float, dict[str, ModelInfo]] | None = None
_configs: dict[int, tuple[float, OrganizationConfig]] = {}


def catalog_models(*, fresh: bool = False) -> dict[str, ModelInfo]:
    """The listed catalog by name (a snapshot; see the module's docstring)."""
    global _catalog
    snapshot = _catalog
    if not fresh and snapshot is not None and snapshot[0] > time.monotonic():
        return snapshot[1]
    models = {row.name: _model_info(row) for row in LlmModel.objects.filter(listed=True)}
    ttl = float(getattr(settings, "LLM_CATALOG_CACHE_SECONDS", 30))
    with _lock:
        _catalog = (time.monotonic() + ttl, models)
    return models


def organization_config(*, organization_id: int, fresh: bool = False) -> OrganizationConfig:
    cached = _configs.get(organization_id)
    if not fresh and cached is not None and cached[0] > time.monotonic():
        return cached[1]
    access = dict(
        ModelAccess.objects.filter(organization_id=organization_id).values_list("model__name", "enabled")
    )
    credentials = {
        row.provider: ResolvedCredential(
            provider=row.provider,
            api_key=api_key_decrypt(row.api_key_encrypted),
            base_url=row.base_url,
            source="organization",
            options=dict(row.options or {}),
        )
        for row in ProviderCredential.objects.filter(organization_id=organization_id)
    }
    policy = RoutingPolicy.objects.filter(organization_id=organization_id).first()
    budgets = tuple(
        BudgetInfo(
            id=row.pk,
            scope=row.scope,
            api_key_id=row.api_key_id,
            run_id=row.run_id,
            period=row.period,
            limit_usd=float(row.limit_usd),
        )
        for row in Budget.objects.filter(organization_id=organization_id)
    )
    config = OrganizationConfig(
        organization_id=organization_id,
        access=access,
        credentials=credentials,
        preferred_models=tuple(policy.preferred_models) if policy else (),
        max_output_price=float(policy.max_output_price)
        if policy and policy.max_output_price is not None
        else None,
        fallbacks={str(key): tuple(value) for key, value in (policy.fallbacks if policy else {}).items()},
        budgets=budgets,
    )
    ttl = float(getattr(settings, "LLM_CONFIG_CACHE_SECONDS", 5))
    with _lock:
        _configs[organization_id] = (time.monotonic() + ttl, config)
    return config


def catalog_cached() -> dict[str, ModelInfo] | None:
    """The catalog snapshot when fresh, without touching the database (async callers)."""
    snapshot = _catalog
    return snapshot[1] if snapshot is not None and snapshot[0] > time.monotonic() else None


def organization_config_cached(organization_id: int) -> OrganizationConfig | None:
    cached = _configs.get(organization_id)
    return cached[1] if cached is not None and cached[0] > time.monotonic() else None


def snapshots_clear(*, organization_id: int | None = None) -> None:
    """Forget this process's snapshots (all, or one organization's settings)."""
    global _catalog
    with _lock:
        if organization_id is None:
            _catalog = None
            _configs.clear()
        else:
            _configs.pop(organization_id, None)


def period_start(period: str, now: datetime | None = None) -> datetime | None:
    now = now or timezone.now()
    if period == Budget.Period.DAY:
        return now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == Budget.Period.MONTH:
        return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return None


def budget_spent(*, organization_id: int, budget: BudgetInfo, now: datetime | None = None) -> float:
    """Written spend in the budget's period as of `now` (from the daily roll-ups; UTC days)."""
    rows = UsageDaily.objects.filter(organization_id=organization_id)
    start = period_start(budget.period, now)
    if start is not None:
        rows = rows.filter(day__gte=start.date())
    if budget.scope == Budget.Scope.API_KEY:
        rows = rows.filter(api_key_id=budget.api_key_id)
    elif budget.scope == Budget.Scope.RUN:
        rows = rows.filter(run_id=budget.run_id)
    total = rows.aggregate(total=Sum("cost_usd"))["total"]
    return float(total or Decimal(0))


def usage_by_day(*, organization_id: int, days: int = 30) -> list[dict[str, Any]]:
    """Daily totals per model and user for the organization's usage page and API."""
    since = (timezone.now() - timedelta(days=days - 1)).date()  # today and the days-1 before
    rows = (
        UsageDaily.objects.filter(organization_id=organization_id, day__gte=since)
        .values("day", "model", "user_id", "api_key_id")
        .annotate(
            requests=Sum("requests"),
            cache_hits=Sum("cache_hits"),
            failures=Sum("failures"),
            input_tokens=Sum("input_tokens"),
            output_tokens=Sum("output_tokens"),
            cached_tokens=Sum("cached_tokens"),
            cost_usd=Sum("cost_usd"),
        )
        .order_by("day", "model")
    )
    return list(rows)


# -- what the API and the pages show an organization ----------------------------------------


def organization_models(*, organization: Organization) -> list[dict[str, Any]]:
    catalog = catalog_models()
    config = organization_config(organization_id=organization.pk, fresh=True)
    rows = []
    for model in catalog.values():
        entry = model.as_dict(enabled=config.enabled(model))
        credential = config.credential(model.provider)
        entry["key_source"] = credential.source if credential is not None else "missing"
        rows.append(entry)
    return rows


def organization_credentials(*, organization: Organization) -> list[dict[str, Any]]:
    config = organization_config(organization_id=organization.pk, fresh=True)
    own = {row.provider: row for row in ProviderCredential.objects.filter(organization=organization)}
    rows = []
    catalog_providers = {model.provider for model in catalog_models().values()}
    for provider in sorted(set(provider_kinds()) | catalog_providers):
        row = own.get(provider)
        resolved = config.credential(provider)
        rows.append(
            {
                "provider": provider,
                "key_source": resolved.source if resolved is not None else "missing",
                "api_key_hint": row.api_key_hint if row else "",
                "base_url": row.base_url if row else "",
                "options": dict(row.options or {}) if row else {},
                "updated_at": row.updated_at if row else None,
            }
        )
    return rows


COUNTERS = ("requests", "cache_hits", "failures", "input_tokens", "output_tokens", "cached_tokens")


def _zero() -> dict[str, Any]:
    return {**dict.fromkeys(COUNTERS, 0), "cost_usd": Decimal(0)}


def _add(total: dict[str, Any], row: dict[str, Any]) -> None:
    for name in COUNTERS:
        total[name] += int(row.get(name) or 0)
    total["cost_usd"] += Decimal(row.get("cost_usd") or 0)


def usage_summary(*, organization: Organization, days: int) -> dict[str, Any]:
    rows = usage_by_day(organization_id=organization.pk, days=days)
    total = _zero()
    by_day: dict[Any, dict[str, Any]] = defaultdict(_zero)
    by_model: dict[str, dict[str, Any]] = defaultdict(_zero)
    by_user: dict[tuple[int, int], dict[str, Any]] = defaultdict(_zero)
    for row in rows:
        _add(total, row)
        _add(by_day[row["day"]], row)
        _add(by_model[row["model"]], row)
        _add(by_user[(int(row["user_id"] or 0), int(row["api_key_id"] or 0))], row)
    user_ids = {user_id for user_id, _ in by_user if user_id}
    emails = dict(User.objects.filter(pk__in=user_ids).values_list("pk", "email")) if user_ids else {}
    return {
        "days": days,
        "total": total,
        "by_day": [{"day": day, **values} for day, values in sorted(by_day.items())],
        "by_model": [
            {"model": model, **values}
            for model, values in sorted(by_model.items(), key=lambda item: -item[1]["cost_usd"])
        ],
        "by_user": [
            {
                "user_id": user_id or None,
                "email": emails.get(user_id, ""),
                "api_key_id": api_key_id or None,
                **values,
            }
            for (user_id, api_key_id), values in sorted(
                by_user.items(), key=lambda item: -item[1]["cost_usd"]
            )
        ],
        "rows": [
            {
                **row,
                "user_id": row["user_id"] or None,
                "api_key_id": row["api_key_id"] or None,
                **{name: int(row.get(name) or 0) for name in COUNTERS},
                "cost_usd": Decimal(row.get("cost_usd") or 0),
            }
            for row in rows
        ],
    }
