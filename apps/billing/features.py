"""The feature registry: every module a plan can grant, declared here with its key.

An organization has a feature when its plan lists it, unless staff overrode it for
that organization (BillingAccount.feature_overrides: {key: true or false}, which wins
either way). One check serves everywhere:

- `feature_check(organization=..., key=...)` in services raises FeatureNotInPlan
  (HTTP 403, code "feature_not_in_plan"), naming the feature and the public plans
  that include it;
- `@feature_required("sso")` on a Django view function, a DRF view method, or a
  whole view class (Django View or DRF APIView) refuses the request the same way:
  the API answers JSON, pages answer an HTML 403 that says which plan to choose;
- `feature_check_cached(organization_id=..., key=...)` is the same check from a
  per-process reading of the organization's features, kept BILLING_QUOTA_CACHE_SECONDS
  (like the token quota's reading), for paths taken at every LLM call or agent step,
  where a query each time would cost more than the call's own bookkeeping. Changing a
  plan or an override forgets the reading in the process that changed it
  (quota_snapshots_clear); other processes see the change within those seconds.

What each feature guards:

- `terminal`: the workspace terminal WebSocket (apps/workspaces/consumers.py: refused
  at connect with an error frame and close 4403, and cut off at the next heartbeat
  when the feature goes), and the terminal panel of the workspace and run pages
  (replaced by the refusal's message);
- `git`: the workspace git API (clone, branch, status, diff, commit, push in
  apps/workspaces/api.py) and committing a run's changes (agents' run_commit);
- `ai_assistance`: starting agent runs (agents' run_create: API, page and
  `manage.py agent run`) and the OpenAI-compatible /v1 chat completions and
  embeddings (apps/llm/openai_compat.py, cached check); a run already going fails at
  its next model call (apps/agents/loop.py, cached check);
- `knowledge`: the knowledge pages and API, and in agent runs the knowledge_search
  tool (not offered) and the knowledge block beside the task (not added), cached;
- `sso`: the SSO settings page and service, and SSO sign-in;
- `audit_export`: exporting the audit log (page and API).

`core_environment`, `code_analysis`, `testing_tools`, `performance_profiling` and
`multi_agent` guard nothing yet: every plan has core_environment (workspaces
themselves stay open to all), and the tools and multi-agent plans the others would
guard do not exist yet. A feature that gains something to guard uses the same check.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, TypeVar, cast

from django.conf import settings
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


def _refusal(
    organization: Organization, key: str, plan_name: str, *, plan_has_it: bool = False
) -> FeatureNotInPlan:
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
    if plan_has_it:  # staff turned it off for this organization: changing plans would not help
        message += f" It is turned off for {organization.name}; ask us to turn it back on."
    return FeatureNotInPlan(message, feature=key, plans=[plan_key for plan_key, _ in plans])


def feature_check(*, organization: Organization, key: str) -> None:
    """Raise FeatureNotInPlan unless the organization has the feature."""
    from apps.billing.plans import billing_account_for

    _known(key)
    account = billing_account_for(organization)
    if key not in account_features(account):
        raise _refusal(organization, key, account.plan.name, plan_has_it=key in account.plan.features)


def feature_refusal(*, organization: Organization, key: str) -> FeatureNotInPlan | None:
    """feature_check's refusal, returned rather than raised (None: it has the feature),
    for a page that shows the message in place of what the feature would show."""
    try:
        feature_check(organization=organization, key=key)
    except FeatureNotInPlan as error:
        return error
    return None


# --- a per-process reading, for hot paths -------------------------------------------


@dataclass(frozen=True)
class _Reading:
    expires: float
    organization: Organization
    plan_name: str
    plan_features: frozenset[str]
    features: frozenset[str]


_readings_lock = threading.Lock()
_readings: dict[int, _Reading] = {}


def features_cache_clear(*, organization_id: int | None = None) -> None:
    """Forget this process's feature readings (all, or one organization's)."""
    with _readings_lock:
        if organization_id is None:
            _readings.clear()
        else:
            _readings.pop(organization_id, None)


def _fresh_reading(organization_id: int) -> _Reading | None:
    with _readings_lock:
        reading = _readings.get(organization_id)
    if reading is None or reading.expires <= time.monotonic():
        return None
    return reading


def _reading(organization_id: int) -> _Reading | None:
    from apps.billing.plans import billing_account_for
    from apps.tenancy.models import Organization

    organization = Organization.objects.filter(pk=organization_id).first()
    if organization is None:
        return None
    account = billing_account_for(organization)
    reading = _Reading(
        expires=time.monotonic() + float(settings.BILLING_QUOTA_CACHE_SECONDS),
        organization=organization,
        plan_name=account.plan.name,
        plan_features=frozenset(account.plan.features),
        features=frozenset(account_features(account)),
    )
    with _readings_lock:
        _readings[organization_id] = reading
    return reading


def feature_check_cached(*, organization_id: int, key: str, cached_only: bool = False) -> bool:
    """feature_check from this process's reading of the organization's features (read
    again after BILLING_QUOTA_CACHE_SECONDS): True when it has the feature, else
    FeatureNotInPlan. With `cached_only` nothing touches the database (an event loop):
    False means "undecided, call again without it" (no fresh reading, or a refusal,
    whose message lists the plans from the database)."""
    _known(key)
    reading = _fresh_reading(organization_id)
    if reading is not None and key in reading.features:
        return True
    if cached_only:
        return False
    reading = reading or _reading(organization_id)
    if reading is None or key in reading.features:
        return True  # an organization that is gone has nothing to refuse here
    raise _refusal(reading.organization, key, reading.plan_name, plan_has_it=key in reading.plan_features)


def feature_enabled_cached(*, organization_id: int, key: str) -> bool:
    """Whether the organization has the feature, from the same per-process reading."""
    try:
        return feature_check_cached(organization_id=organization_id, key=key)
    except FeatureNotInPlan:
        return False


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
