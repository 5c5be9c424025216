"""LLM gateway pages on the organization's host: the models it may call (catalog,
prices, whose key a call uses, an on/off switch for managers), its own provider
keys (set and delete; a key is never shown back, only its last characters), and
its usage by day, model and person or API key, with a chart drawn on the server
as inline SVG (no script). Thin: each view names its action (@require_action)
and reads or writes through the same selectors and services as /api/v1/llm/,
which filter by the organization; a service's refusal is shown on its field
with a 4xx.

The routes carry no URL parameters (the model or provider is in the form):
catalog names are the same in every organization, so a path naming one would
not say whose it is."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from apps.core.charts import Chart, stacked_chart
from apps.core.errors import ServiceError
from apps.llm import selectors, services
from apps.llm.credentials import BASE_URL_REQUIRED, KEYLESS_PROVIDERS
from apps.llm.forms import (
    USAGE_DAYS,
    USAGE_METRICS,
    CredentialDeleteForm,
    CredentialForm,
    ModelSwitchForm,
    UsageForm,
)
from apps.tenancy.audit import Actor
from apps.tenancy.decorators import require_action
from apps.tenancy.models import ApiKey, Membership, Organization
from apps.tenancy.roles import role_allows

KEY_SOURCES = {
    "organization": "Organization's key",
    "platform": "Platform default",
    "none": "None needed",
    "missing": "Missing",
}


def _organization(request: HttpRequest) -> Organization:
    organization: Organization = request.tenant  # type: ignore[attr-defined]
    return organization


def _may(request: HttpRequest, action_key: str) -> bool:
    membership: Membership = request.membership  # type: ignore[attr-defined]
    return role_allows(membership.role, action_key)


def money(value: Decimal | float | int) -> str:
    """US dollars, as many decimals as a small amount needs (up to 6): $12.30, $0.0015."""
    amount = Decimal(str(value))
    if amount == 0:
        return "$0.00"
    if abs(amount) >= Decimal("0.01"):
        return f"${amount:,.2f}"
    whole, _, fraction = f"{amount:.6f}".partition(".")
    fraction = fraction.rstrip("0")
    return f"${whole}.{fraction}" if fraction else "<$0.000001"


def price(value: Decimal | float | int) -> str:
    """A price per million tokens, exact to a hundredth of a cent: $2.50, $0.075, $0.0375."""
    amount = Decimal(str(value))
    whole, _, fraction = f"{amount:,.4f}".partition(".")
    return f"${whole}.{fraction.rstrip('0').ljust(2, '0')}"


def _add_error(form: Any, exc: ServiceError, default_field: str) -> None:
    field = exc.field if exc.field in form.fields else default_field
    form.add_error(field, exc.message)


# Models -------------------------------------------------------------------------------------------


def _models_page(
    request: HttpRequest, *, status: int = 200, switch_form: ModelSwitchForm | None = None
) -> HttpResponse:
    rows = []
    for entry in selectors.organization_models(organization=_organization(request)):
        prices = entry["prices"]
        rows.append(
            {
                **entry,
                "key_source_label": KEY_SOURCES.get(entry["key_source"], entry["key_source"]),
                "context_display": f"{entry['context_window']:,}",
                "price_input": price(prices["input_per_million"]),
                "price_output": price(prices["output_per_million"]),
                "price_cached": price(prices["cached_input_per_million"]),
            }
        )
    rows.sort(key=lambda row: (row["provider"], row["name"]))
    context = {
        "models": rows,
        "may_manage": _may(request, "llm.manage"),
        "switch_form": switch_form,
        "active": "models",
    }
    return render(request, "llm/models.html", context, status=status)


@require_GET
@require_action("llm.view")
def models_page(request: HttpRequest) -> HttpResponse:
    return _models_page(request)


@require_POST
@require_action("llm.manage")
def model_switch_page(request: HttpRequest) -> HttpResponse:
    form = ModelSwitchForm(request.POST)
    if not form.is_valid():
        return _models_page(request, status=400, switch_form=form)
    name, enabled = form.cleaned_data["model"], form.cleaned_data["enabled"]
    organization = _organization(request)
    try:
        services.model_access_set(
            organization=organization, model_name=name, enabled=enabled, actor=Actor.from_request(request)
        )
    except ServiceError as exc:
        _add_error(form, exc, "model")
        # The name came from the form: one the catalog lacks is bad input, not a missing page.
        return _models_page(request, status=400 if exc.status == 404 else exc.status, switch_form=form)
    messages.success(request, f"{name} is now {'on' if enabled else 'off'} for {organization.name}.")
    return HttpResponseRedirect("/llm/models/")


# Credentials --------------------------------------------------------------------------------------


def _credentials_page(
    request: HttpRequest,
    *,
    status: int = 200,
    form: CredentialForm | None = None,
    delete_form: CredentialDeleteForm | None = None,
) -> HttpResponse:
    rows = selectors.organization_credentials(organization=_organization(request))
    for row in rows:
        row["key_source_label"] = KEY_SOURCES.get(row["key_source"], row["key_source"])
        row["keyless"] = row["provider"] in KEYLESS_PROVIDERS
        row["needs_base_url"] = row["provider"] in BASE_URL_REQUIRED
        row["own"] = bool(row["updated_at"])
        row["options_text"] = ", ".join(
            f"{name}: {'yes' if value is True else 'no' if value is False else value}"
            for name, value in row["options"].items()
        )
    settable = [row["provider"] for row in rows if not row["keyless"]]
    context = {
        "credentials": rows,
        "form": form or CredentialForm(providers=settable),
        "delete_form": delete_form,
        "may_manage": _may(request, "llm.manage"),
        "base_url_required": sorted(BASE_URL_REQUIRED),
        "active": "credentials",
    }
    response = render(request, "llm/credentials.html", context, status=status)
    response["Cache-Control"] = "no-store"  # its form takes a provider's key
    return response


def _settable_providers(request: HttpRequest) -> list[str]:
    return [
        row["provider"]
        for row in selectors.organization_credentials(organization=_organization(request))
        if row["provider"] not in KEYLESS_PROVIDERS
    ]


@require_GET
@require_action("llm.usage")
def credentials_page(request: HttpRequest) -> HttpResponse:
    return _credentials_page(request)


@require_POST
@require_action("llm.manage")
def credential_set_page(request: HttpRequest) -> HttpResponse:
    form = CredentialForm(request.POST, providers=_settable_providers(request))
    if not form.is_valid():
        return _credentials_page(request, status=400, form=form)
    provider = form.cleaned_data["provider"]
    try:
        credential = services.credential_set(
            organization=_organization(request),
            provider=provider,
            api_key=form.cleaned_data["api_key"],
            base_url=form.cleaned_data["base_url"],
            options=form.options(),
            actor=Actor.from_request(request),
        )
    except ServiceError as exc:
        _add_error(form, exc, "provider")
        return _credentials_page(request, status=exc.status, form=form)
    hint = f" {credential.api_key_hint}" if credential.api_key_hint else ""
    messages.success(request, f"The {provider} key{hint} was saved; calls to {provider} models use it now.")
    return HttpResponseRedirect("/llm/credentials/")


@require_POST
@require_action("llm.manage")
def credential_delete_page(request: HttpRequest) -> HttpResponse:
    form = CredentialDeleteForm(request.POST)
    if not form.is_valid():
        return _credentials_page(request, status=400, delete_form=form)
    provider = form.cleaned_data["provider"]
    try:
        services.credential_delete(
            organization=_organization(request), provider=provider, actor=Actor.from_request(request)
        )
    except ServiceError as exc:
        _add_error(form, exc, "provider")
        return _credentials_page(request, status=exc.status, delete_form=form)
    messages.success(
        request, f"The {provider} key was deleted; calls fall back to the platform's default key, if any."
    )
    return HttpResponseRedirect("/llm/credentials/")


# Usage --------------------------------------------------------------------------------------------


def _metric_value(row: dict[str, Any], metric: str) -> Decimal:
    if metric == "requests":
        return Decimal(int(row["requests"]))
    if metric == "tokens":
        return Decimal(int(row["input_tokens"]) + int(row["output_tokens"]))
    return Decimal(row["cost_usd"])


def _metric_label(value: Decimal, metric: str) -> str:
    return money(value) if metric == "cost" else f"{int(value):,}"


def usage_chart(summary: dict[str, Any], *, days: int, metric: str, today: date | None = None) -> Chart:
    """Stacked bars, one a day since the first day the usage covers, one colour a model."""
    today = today or timezone.now().date()
    first = today - timedelta(days=days - 1)  # the same window as selectors.usage_by_day
    models = [row["model"] for row in summary["by_model"]]
    values: dict[date, dict[str, Decimal]] = {}
    for row in summary["rows"]:
        if first <= row["day"] <= today:
            per_model = values.setdefault(row["day"], {})
            per_model[row["model"]] = per_model.get(row["model"], Decimal(0)) + _metric_value(row, metric)
    return stacked_chart(
        values,
        series=models,
        labels={},
        first=first,
        last=today,
        title=USAGE_METRICS[metric],
        value_text=lambda value: _metric_label(value, metric),
    )


def _with_display(row: dict[str, Any]) -> dict[str, Any]:
    return {
        **row,
        "cost": money(row["cost_usd"]),
        **{
            f"{name}_display": f"{int(row[name]):,}"
            for name in (
                "requests",
                "cache_hits",
                "failures",
                "input_tokens",
                "output_tokens",
                "cached_tokens",
            )
        },
    }


@require_GET
@require_action("llm.usage")
def usage_page(request: HttpRequest) -> HttpResponse:
    organization = _organization(request)
    form = UsageForm(request.GET)
    choices: dict[str, Any] = {
        "day_choices": [(str(days), f"Last {days} days") for days in USAGE_DAYS],
        "metric_choices": list(USAGE_METRICS.items()),
    }
    if not form.is_valid():
        context = {
            **choices,
            "form": form,
            "active": "usage",
            "summary": None,
            "selected_days": "30",
            "selected_metric": "cost",
        }
        return render(request, "llm/usage.html", context, status=400)
    days, metric = form.cleaned_data["days"], form.cleaned_data["metric"]
    summary = selectors.usage_summary(organization=organization, days=days)
    key_ids = {row["api_key_id"] for row in summary["by_user"] if row["api_key_id"]}
    keys = {
        key.pk: key
        for key in ApiKey.objects.filter(organization=organization, pk__in=key_ids).only(
            "pk", "name", "prefix"
        )
    }
    by_user = []
    for row in summary["by_user"]:
        key = keys.get(row["api_key_id"])
        by_user.append({**_with_display(row), "api_key": key})
    context = {
        "form": form,
        "active": "usage",
        "days": days,
        "metric": metric,
        "summary": summary,
        "empty": not summary["rows"],
        "total": _with_display(summary["total"]),
        "by_day": [_with_display(row) for row in reversed(summary["by_day"])],
        "by_model": [_with_display(row) for row in summary["by_model"]],
        "by_user": by_user,
        "chart": usage_chart(summary, days=days, metric=metric) if summary["rows"] else None,
        **choices,
        "selected_days": str(days),
        "selected_metric": metric,
    }
    return render(request, "llm/usage.html", context)
