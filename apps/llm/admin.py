"""The gateway in the back office (public host, platform staff only).

Staff edit the catalog (prices, windows, defaults, fallbacks; `manage.py
llm_catalog_sync` puts shipped values back), see organizations' model switches,
routing policies and budgets, see which providers an organization has its own key
for (never the key), and read usage. Every change is audited like the rest of the
back office and drops this process's gateway snapshots at once."""

from typing import Any

from django.contrib import admin
from django.db.models import Model
from django.http import HttpRequest

from apps.llm import selectors
from apps.llm.models import Budget, LlmModel, ModelAccess, ProviderCredential, RoutingPolicy, UsageDaily
from apps.tenancy.admin import AuditedModelAdmin, ModelAdmin


class _SnapshotDroppingAdmin(AuditedModelAdmin[Any]):
    def save_model(self, request: HttpRequest, obj: Model, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        selectors.snapshots_clear()

    def delete_model(self, request: HttpRequest, obj: Model) -> None:
        super().delete_model(request, obj)
        selectors.snapshots_clear()


@admin.register(LlmModel)
class LlmModelAdmin(_SnapshotDroppingAdmin):
    list_display = (
        "name",
        "provider",
        "provider_model",
        "context_window",
        "input_price",
        "output_price",
        "tier",
        "enabled_by_default",
        "listed",
    )
    list_filter = (
        "provider",
        "tier",
        "enabled_by_default",
        "listed",
        "supports_tools",
        "supports_embeddings",
    )
    search_fields = ("name", "provider_model")
    audit_fields = (
        "provider",
        "provider_model",
        "context_window",
        "input_price",
        "output_price",
        "cached_input_price",
        "enabled_by_default",
        "fallbacks",
    )


@admin.register(ModelAccess)
class ModelAccessAdmin(_SnapshotDroppingAdmin):
    list_display = ("organization", "model", "enabled", "updated_at")
    list_filter = ("enabled", "organization")
    list_select_related = ("organization", "model")
    audit_fields = ("enabled",)


@admin.register(ProviderCredential)
class ProviderCredentialAdmin(_SnapshotDroppingAdmin):
    """Which organizations bring their own key; keys are set on the organization's pages only."""

    list_display = ("organization", "provider", "api_key_hint", "base_url", "updated_at")
    list_filter = ("provider",)
    list_select_related = ("organization",)
    fields = ("organization", "provider", "api_key_hint", "base_url", "created_at", "updated_at")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(RoutingPolicy)
class RoutingPolicyAdmin(_SnapshotDroppingAdmin):
    list_display = ("organization", "preferred_models", "max_output_price", "updated_at")
    list_select_related = ("organization",)
    audit_fields = ("preferred_models", "max_output_price", "fallbacks")


@admin.register(Budget)
class BudgetAdmin(_SnapshotDroppingAdmin):
    list_display = ("organization", "scope", "api_key_id", "run_id", "period", "limit_usd", "created_at")
    list_filter = ("scope", "period")
    list_select_related = ("organization",)
    audit_fields = ("scope", "api_key_id", "run_id", "period", "limit_usd")


@admin.register(UsageDaily)
class UsageDailyAdmin(ModelAdmin[UsageDaily]):
    """Read only: usage is written by the meter."""

    list_display = (
        "day",
        "organization",
        "model",
        "user_id",
        "api_key_id",
        "run_id",
        "requests",
        "cache_hits",
        "failures",
        "input_tokens",
        "output_tokens",
        "cost_usd",
    )
    list_filter = ("day", "model")
    list_select_related = ("organization",)
    date_hierarchy = "day"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
