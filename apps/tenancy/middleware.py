from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render

from apps.core.api import api_error
from apps.tenancy.db import tenant_connection
from apps.tenancy.hosts import public_url
from apps.tenancy.models import Organization
from apps.tenancy.resolution import resolve_request
from apps.tenancy.selectors import membership_get

View = Callable[..., HttpResponse]


class TenantMiddleware:
    """Sets the schema and URLconf for the request's organization, or the public site.

    Unlike django-tenants' own middleware it needs no row for the public site,
    answers unknown hosts with the 404 page, and shows organizations that are
    being set up or suspended a page saying so instead of their app.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        tenant_connection().set_schema_to_public()
        request.api_key = None  # type: ignore[attr-defined]
        resolution = resolve_request(request)
        request.tenant = resolution.organization  # type: ignore[attr-defined]
        is_api = request.path.startswith("/api/")
        if resolution.error is not None:
            status, code, message = resolution.error
            return api_error(status, code, message)
        if resolution.public:
            request.urlconf = settings.PUBLIC_SCHEMA_URLCONF  # type: ignore[attr-defined]
            return self.get_response(request)
        organization = resolution.organization
        if organization is None:
            if is_api:
                return api_error(404, "not_found", "No organization lives at this host.")
            return render(request, "404.html", {"unknown_host": True}, status=404)
        if is_api and organization.status != Organization.Status.ACTIVE:
            code = (
                "organization_suspended"
                if organization.status == Organization.Status.SUSPENDED
                else "organization_unavailable"
            )
            return api_error(
                403, code, f"{organization.name} is {organization.get_status_display().lower()}."
            )
        if organization.status == Organization.Status.PROVISIONING:
            return render(request, "tenancy/provisioning.html", {"org": organization}, status=503)
        if organization.status != Organization.Status.ACTIVE:
            return render(request, "tenancy/unavailable.html", {"org": organization}, status=403)
        tenant_connection().set_tenant(organization)
        try:
            return self.get_response(request)
        finally:
            tenant_connection().set_schema_to_public()


def outsiders_allowed(view: View) -> View:
    """Mark a tenant view that anyone may open (log out, say). Use rarely:
    the cross-tenant isolation suite reports every such view that leaks."""
    view.outsiders_allowed = True  # type: ignore[attr-defined]
    return view


class MembershipRequiredMiddleware:
    """Every page on an organization's host is for its members only, by default.

    Anonymous visitors are sent to log in; people who are not members get 403.
    Views opt out explicitly with @outsiders_allowed.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(self, request: HttpRequest, view: View, args: Any, kwargs: Any) -> HttpResponse | None:
        organization = getattr(request, "tenant", None)
        request.membership = None  # type: ignore[attr-defined]
        if organization is None:
            return None
        membership = membership_get(user=request.user, organization=organization)  # type: ignore[arg-type]
        request.membership = membership  # type: ignore[attr-defined]
        if getattr(view, "outsiders_allowed", False) or getattr(
            getattr(view, "view_class", None), "outsiders_allowed", False
        ):
            return None
        if request.path.startswith("/api/"):
            # API keys were checked against this organization by the resolver;
            # what each key may do is the view's permission check.
            if getattr(request, "api_key", None) is not None:
                return None
            if not request.user.is_authenticated:
                return api_error(401, "not_authenticated", "Log in or send an API key.")
            if membership is None:
                return api_error(403, "not_a_member", "You are not a member of this organization.")
            return None
        if not request.user.is_authenticated:
            query = urlencode({"next": request.build_absolute_uri()})
            return HttpResponseRedirect(public_url(request, "/login/?" + query))
        if membership is None:
            return render(request, "403.html", {"org": organization}, status=403)
        return None
