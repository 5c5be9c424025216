"""The back office: Django's admin for platform staff, on the public host only.

`admin/` is routed in config/urls_public.py and nowhere in the tenant URLconf,
so an organization's host has no back office at all. Every change made here
is also written to the audit log by AuditedModelAdmin, in the same transaction
as the change; organizations change status only through the services in
apps/tenancy/backoffice.py, with a reason.
"""

import json
from typing import TYPE_CHECKING, Any, TypeVar

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.models import LogEntry
from django.core.exceptions import PermissionDenied
from django.db import models, transaction
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone

from apps.core.errors import ServiceError
from apps.tenancy.audit import Actor, audit_record, summarize
from apps.tenancy.backoffice import REASON_MAX_LENGTH, organization_reactivate, organization_suspend
from apps.tenancy.identity import api_key_revoke
from apps.tenancy.models import ApiKey, AuditEvent, Domain, Membership, Organization

admin.site.site_header = "Agentyard back office"
admin.site.site_title = "Agentyard back office"
admin.site.index_title = "Platform administration"

_M = TypeVar("_M", bound=models.Model)

if TYPE_CHECKING:
    ModelAdmin = admin.ModelAdmin
    TabularInline = admin.TabularInline
else:
    # django-stubs makes these generic for the type checker only; at run time
    # `ModelAdmin[Organization]` needs a __class_getitem__ (django_stubs_ext is a dev tool).
    class ModelAdmin(admin.ModelAdmin):
        __class_getitem__ = classmethod(lambda cls, _item: cls)

    class TabularInline(admin.TabularInline):
        __class_getitem__ = classmethod(lambda cls, _item: cls)


def _json_safe(value: Any) -> Any:
    """Admin change messages may hold lazy strings; the audit log stores plain JSON."""
    return json.loads(json.dumps(value, default=str))


def audit_organization(obj: models.Model) -> Organization | None:
    if isinstance(obj, Organization):
        return obj
    organization = getattr(obj, "organization", None)
    return organization if isinstance(organization, Organization) else None


class AuditedModelAdmin(ModelAdmin[_M]):
    """Writes an AuditEvent beside each admin LogEntry: `admin.add`, `admin.change`,
    `admin.delete`, with the staff member as the actor.

    Django calls these hooks inside the transaction that saves or deletes the
    object (response_action is wrapped here so bulk deletes are too), so the
    event exists exactly when the change does. `audit_fields` name the values
    recorded before and after; the admin's own change message names the rest.
    """

    audit_fields: tuple[str, ...] = ()

    def save_model(self, request: HttpRequest, obj: _M, form: Any, change: bool) -> None:
        if change and self.audit_fields:
            old = type(obj)._default_manager.filter(pk=obj.pk).first()
            if old is not None:
                request._audit_before = summarize(old, list(self.audit_fields))  # type: ignore[attr-defined]
        super().save_model(request, obj, form, change)

    def _audit(
        self,
        request: HttpRequest,
        obj: _M,
        action: str,
        *,
        message: Any = None,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
    ) -> None:
        if message:
            after = (after or {}) | {"admin_message": _json_safe(message)}
        audit_record(
            actor=Actor.from_request(request),
            organization=audit_organization(obj),
            action=action,
            target=obj,
            before=before,
            after=after,
        )

    def _summary(self, obj: _M) -> dict[str, Any] | None:
        return summarize(obj, list(self.audit_fields)) if self.audit_fields else None

    def log_addition(self, request: HttpRequest, obj: _M, message: Any) -> LogEntry:
        entry = super().log_addition(request, obj, message)
        self._audit(request, obj, "admin.add", message=message, after=self._summary(obj))
        return entry

    def log_change(self, request: HttpRequest, obj: _M, message: Any) -> LogEntry:
        entry = super().log_change(request, obj, message)
        before = getattr(request, "_audit_before", None)
        self._audit(request, obj, "admin.change", message=message, before=before, after=self._summary(obj))
        return entry

    def log_deletions(self, request: HttpRequest, queryset: QuerySet[_M]) -> list[LogEntry] | LogEntry:
        entries = super().log_deletions(request, queryset)
        for obj in queryset:
            self._audit(request, obj, "admin.delete", before=self._summary(obj) or {"repr": str(obj)})
        return entries

    def response_action(self, request: HttpRequest, queryset: QuerySet[_M]) -> HttpResponse | None:
        # Bulk actions (delete_selected among them) are not atomic in Django.
        with transaction.atomic():
            return super().response_action(request, queryset)


# Organizations


class ReasonForm(forms.Form):
    reason = forms.CharField(
        max_length=REASON_MAX_LENGTH,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="Kept in the audit log. For a suspension it is also what the organization's people see.",
    )


class DomainInline(TabularInline[Domain, Organization]):
    model = Domain
    fields = ("domain", "is_primary")
    readonly_fields = ("domain", "is_primary")
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Organization | None = None) -> bool:
        return False


class OrganizationMembershipInline(TabularInline[Membership, Organization]):
    model = Membership
    fields = ("user", "role", "created_at")
    readonly_fields = ("user", "role", "created_at")
    extra = 0
    can_delete = False
    show_change_link = True
    verbose_name_plural = "Members (change them under Memberships)"

    def has_add_permission(self, request: HttpRequest, obj: Organization | None = None) -> bool:
        return False


STATUS_CHANGES = {
    # url part: (verb, service, status it applies to)
    "suspend": ("Suspend", organization_suspend, Organization.Status.ACTIVE),
    "reactivate": ("Reactivate", organization_reactivate, Organization.Status.SUSPENDED),
}


@admin.register(Organization)
class OrganizationAdmin(AuditedModelAdmin[Organization]):
    list_display = ("name", "slug", "status", "member_count", "created_by", "created_at", "provisioned_at")
    list_filter = ("status", "created_at")
    search_fields = ("name", "slug", "domains__domain")
    ordering = ("name",)
    list_select_related = ("created_by",)
    fields = (
        "name",
        "slug",
        "schema_name",
        "status",
        "status_detail",
        "created_by",
        "created_at",
        "updated_at",
        "provisioned_at",
    )
    readonly_fields = (
        "slug",
        "schema_name",
        "status",
        "status_detail",
        "created_by",
        "created_at",
        "updated_at",
        "provisioned_at",
    )
    inlines = (DomainInline, OrganizationMembershipInline)
    actions = ("suspend_selected", "reactivate_selected")
    audit_fields = ("name",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Organization]:
        return super().get_queryset(request).annotate(_member_count=Count("memberships", distinct=True))

    @admin.display(description="Members", ordering="_member_count")
    def member_count(self, obj: Organization) -> int:
        return int(getattr(obj, "_member_count", 0))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # organizations are made by sign-up, which provisions their schema

    def has_delete_permission(self, request: HttpRequest, obj: Organization | None = None) -> bool:
        return False  # deleting drops the schema and everything in it; suspend instead

    def get_urls(self) -> list[URLPattern]:
        own = [
            path(
                f"{change}/",
                self.admin_site.admin_view(self.status_change_view),
                {"change": change},
                name=f"tenancy_organization_{change}",
            )
            for change in STATUS_CHANGES
        ]
        return own + super().get_urls()

    def _redirect_to_status_change(self, change: str, queryset: QuerySet[Organization]) -> HttpResponse:
        ids = ",".join(str(pk) for pk in queryset.values_list("pk", flat=True))
        return HttpResponseRedirect(f"{reverse(f'admin:tenancy_organization_{change}')}?ids={ids}")

    @admin.action(description="Suspend selected organizations…", permissions=["change"])
    def suspend_selected(self, request: HttpRequest, queryset: QuerySet[Organization]) -> HttpResponse:
        return self._redirect_to_status_change("suspend", queryset)

    @admin.action(description="Reactivate selected organizations…", permissions=["change"])
    def reactivate_selected(self, request: HttpRequest, queryset: QuerySet[Organization]) -> HttpResponse:
        return self._redirect_to_status_change("reactivate", queryset)

    def status_change_view(self, request: HttpRequest, change: str) -> HttpResponse:
        """Ask for a reason, then suspend or reactivate the organizations in `ids`."""
        if not self.has_change_permission(request):
            raise PermissionDenied
        verb, service, applies_to = STATUS_CHANGES[change]
        raw_ids = request.POST.get("ids") if request.method == "POST" else request.GET.get("ids")
        ids = [int(part) for part in (raw_ids or "").split(",") if part.strip().isdigit()]
        organizations = list(Organization.objects.filter(pk__in=ids).order_by("name"))
        changelist = reverse("admin:tenancy_organization_changelist")
        if not organizations:
            self.message_user(request, "Select at least one organization.", messages.WARNING)
            return HttpResponseRedirect(changelist)
        form = ReasonForm(request.POST if request.method == "POST" else None)
        if request.method == "POST" and form.is_valid():
            done = []
            for organization in organizations:
                try:
                    service(
                        actor=Actor.from_request(request),
                        organization=organization,
                        reason=form.cleaned_data["reason"],
                    )
                except ServiceError as exc:
                    self.message_user(request, exc.message, messages.ERROR)
                else:
                    done.append(organization.name)
            if done:
                past = "suspended" if change == "suspend" else "reactivated"
                self.message_user(request, f"{', '.join(done)} {past}.", messages.SUCCESS)
            if len(organizations) == 1:
                return HttpResponseRedirect(
                    reverse("admin:tenancy_organization_change", args=[organizations[0].pk])
                )
            return HttpResponseRedirect(changelist)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"{verb} {'this organization' if len(organizations) == 1 else 'organizations'}",
            "verb": verb,
            "change": change,
            "organizations": organizations,
            "applies_to": applies_to,
            "skipped": [org for org in organizations if org.status != applies_to],
            "ids": ",".join(str(org.pk) for org in organizations),
            "form": form,
            "changelist_url": changelist,
        }
        return TemplateResponse(
            request,
            "admin/tenancy/organization/status_change.html",
            context,
            status=400 if request.method == "POST" else 200,
        )


# Memberships


@admin.register(Membership)
class MembershipAdmin(AuditedModelAdmin[Membership]):
    list_display = ("user", "organization", "role", "created_at")
    list_filter = ("role", "organization")
    search_fields = ("user__email", "user__name", "organization__name", "organization__slug")
    list_select_related = ("user", "organization")
    autocomplete_fields = ("user", "organization")
    ordering = ("organization__name", "user__email")
    audit_fields = ("role",)


# API keys


class ApiKeyStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("active", "Active"), ("revoked", "Revoked"), ("expired", "Expired")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        now = timezone.now()
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True).exclude(expires_at__lte=now)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        if self.value() == "expired":
            return queryset.filter(revoked_at__isnull=True, expires_at__lte=now)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(AuditedModelAdmin[ApiKey]):
    """Keys are read-only here except for revoking; the secret's hash is never shown."""

    list_display = (
        "name",
        "prefix",
        "organization",
        "scopes",
        "key_status",
        "created_by",
        "created_at",
        "last_used_at",
        "expires_at",
    )
    list_filter = (ApiKeyStatusFilter, "organization")
    search_fields = ("name", "prefix", "organization__name", "organization__slug")
    list_select_related = ("organization", "created_by")
    fields = (
        "name",
        "prefix",
        "organization",
        "scopes",
        "created_by",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
        "last_used_ip",
    )
    readonly_fields = fields
    actions = ("revoke_selected",)

    @admin.display(description="Status")
    def key_status(self, obj: ApiKey) -> str:
        return obj.status

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # a key's secret is shown once to whoever creates it, in their organization

    def has_change_permission(self, request: HttpRequest, obj: ApiKey | None = None) -> bool:
        # The revoke action needs "change" on the list; a key's page stays read-only.
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: ApiKey | None = None) -> bool:
        return False  # revoke instead: the key's audit history points at it

    @admin.action(description="Revoke selected API keys", permissions=["change"])
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        revoked = 0
        for api_key in queryset.select_related("organization"):
            if api_key.revoked_at is None:
                api_key_revoke(actor=Actor.from_request(request), api_key=api_key)
                revoked += 1
        self.message_user(
            request, f"Revoked {revoked} API key{'s' if revoked != 1 else ''}.", messages.SUCCESS
        )


# Audit events


@admin.register(AuditEvent)
class AuditEventAdmin(ModelAdmin[AuditEvent]):
    """The audit log, read-only: nobody may add, change or delete an event, staff included."""

    list_display = ("created_at", "action", "actor_email", "organization", "target_type", "target_repr", "ip")
    list_filter = ("action", ("organization", admin.RelatedOnlyFieldListFilter), "created_at")
    search_fields = ("actor_email", "target_repr", "target_id", "action")
    date_hierarchy = "created_at"
    show_full_result_count = False
    fields = (
        "created_at",
        "action",
        "organization",
        "actor",
        "actor_email",
        "api_key",
        "target_type",
        "target_id",
        "target_repr",
        "changes",
        "ip",
        "user_agent",
        "request_id",
    )
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[AuditEvent]:
        # Outer joins: an event outlives its organization, actor and key, which then show as empty.
        return super().get_queryset(request).select_related("organization", "actor", "api_key")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AuditEvent | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AuditEvent | None = None) -> bool:
        return False
