"""The feature registry: every module a plan can grant, declared here with its key.

An organization has a feature when its plan lists it, unless staff overrode it for
that organization (BillingAccount.feature_overrides: {key: true or false}, which wins
either way). One check serves everywhere:

- `feature_check(organization=..., key=...)` in services raises FeatureNotInPlan
  (HTTP 403, code "feature_not_in_plan"), naming the feature and the public plans
  that include it;
- `@feature_required("sso")` on a Django view function, a DRF view method, or a
  whole view class (Django View or DRF APIView) refuses the request the same way:
  the API answers JSON, pages answer an HTML 403 that says which plan to choose.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, TypeVar, cast

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from apps.core.errors import Forbidden

if TYPE_CHECKING:
    from apps.billing.models import BillingAccount
    from apps.tenancy.models import Organization


@dataclass(frozen=True)
class Feature:
    key: str
    name: str
    description: str


FEATURES: dict[str, Feature] = {
    feature.key: feature
    for feature in (
        Feature(
            "core_environment", "Core environment", "Workspaces with a sandboxed development environment"
        ),
        Feature("git", "Git", "Git operations on workspace repositories"),
        Feature("terminal", "Terminal", "Interactive terminals in workspaces"),
        Feature("ai_assistance", "AI assistance", "AI agents and the LLM gateway"),
        Feature("code_analysis", "Code analysis", "Code analysis tools for agents"),
        Feature("testing_tools", "Testing tools", "Test running and coverage tools for agents"),
        Feature("performance_profiling", "Performance profiling", "Performance profiling tools"),
        Feature("knowledge", "Knowledge", "Shared knowledge: indexed repositories, documents and search"),
        Feature("multi_agent", "Multi-agent", "Multi-agent plans: several agents working together"),
        Feature("sso", "Single sign-on", "Sign-in through the organization's own identity provider (OIDC)"),
        Feature("audit_export", "Audit export", "Exporting the organization's audit log"),
    )
}


class FeatureNotInPlan(Forbidden):
    status = 403
    code = "feature_not_in_plan"

    def __init__(self, message: str, *, feature: str, plans: list[str]) -> None:
        super().__init__(message)
        self.feature = feature
        self.plans = plans

    @property
    def extra_body(self) -> dict[str, Any]:
        """Added to the API's error body beside {"error": {...}}."""
        return {"detail": self.message, "code": self.code, "feature": self.feature, "plans": self.plans}


def _known(key: str) -> Feature:
    try:
        return FEATURES[key]
    except KeyError:
        raise KeyError(f"Unknown feature {key!r}; declare it in apps/billing/features.py FEATURES.") from None


def account_features(account: BillingAccount) -> set[str]:
    """The features an account has: its plan's, with staff's overrides applied."""
    granted = {key for key in account.plan.features if key in FEATURES}
    for key, enabled in (account.feature_overrides or {}).items():
        if key not in FEATURES:
            continue
        if enabled:
            granted.add(key)
        else:
            granted.discard(key)
    return granted


def organization_features(organization: Organization) -> set[str]:
    from apps.billing.plans import billing_account_for

    return account_features(billing_account_for(organization))


def feature_enabled(*, organization: Organization, key: str) -> bool:
    _known(key)
    return key in organization_features(organization)


def plans_with_feature(key: str) -> list[tuple[str, str]]:
    """(key, name) of the public, current plans that include the feature, cheapest first."""
    from apps.billing.models import Plan

    plans = Plan.objects.filter(public=True, archived=False, organization__isnull=True).order_by(
        "position", "monthly_fee"
    )
    return [(plan.key, plan.name) for plan in plans if key in plan.features]


def _refusal(organization: Organization, key: str, plan_name: str) -> FeatureNotInPlan:
    feature = FEATURES[key]
    plans = plans_with_feature(key)
    if plans:
        names = [name for _, name in plans]
        which = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        verb = "includes" if len(names) == 1 else "include"
        offer = f", which the {which} plan{'s' if len(names) > 1 else ''} {verb}"
    else:
        offer = "; ask us about a custom plan"
    message = (
        f"{feature.name} needs the '{key}' feature{offer}. {organization.name} is on the {plan_name} plan."
    )
    return FeatureNotInPlan(message, feature=key, plans=[plan_key for plan_key, _ in plans])


def feature_check(*, organization: Organization, key: str) -> None:
    """Raise FeatureNotInPlan unless the organization has the feature."""
    from apps.billing.plans import billing_account_for

    _known(key)
    account = billing_account_for(organization)
    if key not in account_features(account):
        raise _refusal(organization, key, account.plan.name)


# --- views ------------------------------------------------------------------------

Target = TypeVar("Target")


def _request_of(args: tuple[Any, ...]) -> HttpRequest | None:
    """The request among a view's arguments: first for a function, second for a method."""
    for arg in args[:2]:
        if isinstance(arg, HttpRequest):
            return arg
        inner = getattr(arg, "_request", None)  # a DRF Request wraps Django's
        if isinstance(inner, HttpRequest):
            return inner
    return None


def _wants_json(request: HttpRequest) -> bool:
    return request.path.startswith("/api/") or "application/json" in request.headers.get("Accept", "")


def feature_refused_response(request: HttpRequest, error: FeatureNotInPlan) -> HttpResponse:
    if _wants_json(request):
        body = {"error": {"code": error.code, "message": error.message, "fields": {}}, **error.extra_body}
        return JsonResponse(body, status=HTTPStatus.FORBIDDEN)
    context = {"feature": FEATURES[error.feature], "message": error.message, "plans": error.plans}
    return render(request, "billing/feature_not_in_plan.html", context, status=HTTPStatus.FORBIDDEN)


def _organization_of(request: HttpRequest) -> Organization:
    organization: Organization | None = getattr(request, "tenant", None)
    if organization is None or organization.schema_name == "public":
        raise RuntimeError("feature_required guards organization views; this request has no organization")
    return organization


def feature_required(key: str) -> Callable[[Target], Target]:
    """Refuse the view with a 403 naming the feature and the plans with it, unless the
    request's organization has it. On a DRF view class the check runs after
    authentication and permissions (in `initial`), so a stranger still gets 401/403 first."""
    _known(key)

    def decorator(target: Target) -> Target:
        if isinstance(target, type):
            return cast(Target, _guard_class(target, key))
        view = cast(Callable[..., Any], target)

        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            request = _request_of(args)
            if request is None:
                raise TypeError(f"{view.__qualname__} has no request argument for feature_required")
            try:
                feature_check(organization=_organization_of(request), key=key)
            except FeatureNotInPlan as error:
                if len(args) > 1 and not isinstance(args[0], HttpRequest):
                    raise  # a DRF method: its exception handler answers
                return feature_refused_response(request, error)
            return view(*args, **kwargs)

        wrapper.required_feature = key  # type: ignore[attr-defined]
        return cast(Target, wrapper)

    return decorator


def _guard_class(cls: type, key: str) -> type:
    from rest_framework.views import APIView

    if issubclass(cls, APIView):
        original_initial = cls.initial

        def initial(self: APIView, request: Any, *args: Any, **kwargs: Any) -> None:
            original_initial(self, request, *args, **kwargs)
            feature_check(organization=_organization_of(request._request), key=key)

        cls.initial = initial  # type: ignore[method-assign]
    else:
        original_dispatch = cls.dispatch  # type: ignore[attr-defined]

        def dispatch(self: Any, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            try:
                feature_check(organization=_organization_of(request), key=key)
            except FeatureNotInPlan as error:
                return feature_refused_response(request, error)
            return original_dispatch(self, request, *args, **kwargs)

        cls.dispatch = dispatch  # type: ignore[attr-defined]
    cls.required_feature = key  # type: ignore[attr-defined]
    return cls
