"""The page side of the permission layer: a view names the action it performs
(a key of apps.tenancy.roles.ACTIONS), as API views do with `actions`."""

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import render

from apps.tenancy.models import Membership, Organization
from apps.tenancy.roles import ACTIONS, role_allows

View = TypeVar("View", bound=Callable[..., HttpResponseBase])


def forbidden_page(request: HttpRequest, action_key: str) -> HttpResponse:
    """403 that names what is missing: the action, the person's role and who may do it."""
    action = ACTIONS[action_key]
    membership = getattr(request, "membership", None)
    allowed = [role.label.lower() for role in action.roles]
    context = {
        "missing_action": action,
        "role_label": membership.get_role_display().lower() if membership else None,
        "allowed_roles": sorted(allowed),
    }
    return render(request, "403.html", context, status=403)


def require_action(action_key: str) -> Callable[[View], View]:
    """Refuse the page with a 403 unless the member's role allows `action_key`.

    The membership middleware has already refused outsiders; this decides what
    each member may do, from the same table the API and services read."""
    if action_key not in ACTIONS:
        raise KeyError(f"Unknown action {action_key!r}; add it to apps/tenancy/roles.py ACTIONS.")

    def decorator(view: View) -> View:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            membership = getattr(request, "membership", None)
            if membership is None or not role_allows(membership.role, action_key):
                return forbidden_page(request, action_key)
            return view(request, *args, **kwargs)

        wrapper.required_action = action_key  # type: ignore[attr-defined]
        return cast(View, wrapper)

    return decorator


def page_organization(request: HttpRequest) -> Organization:
    """The organization whose host the page was asked on (set by the tenant middleware)."""
    organization: Organization = request.tenant  # type: ignore[attr-defined]
    return organization


def page_allows(request: HttpRequest, action_key: str) -> bool:
    """Whether the member viewing the page may perform the action (to show its controls)."""
    membership: Membership = request.membership  # type: ignore[attr-defined]
    return role_allows(membership.role, action_key)
