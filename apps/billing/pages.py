"""Billing pages on the organization's host, under /billing/: the plan and its status and
period, the limits with what is used of each, usage by day and kind (a chart drawn on
the server as inline SVG, like the LLM usage page), cost by model, person and project,
invoices, the plans to choose from (Stripe Checkout), the payment portal, and the
monthly budget with its alert thresholds.

Everyone in the organization sees it (billing.view); only owners, admins and the
billing role change anything (billing.manage), and the others see the controls
disabled. Thin: reads through apps/billing/selectors.py and CORE's quotas, writes
through the services; a refusal (a downgrade the usage does not fit, a bad budget)
is shown on the page with a 4xx.

The routes carry no URL parameters (the plan is in the form): plan keys are the same
in every organization, so a path naming one would not say whose it is."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from apps.billing import choices, selectors, stripe_adapter
from apps.billing.forms import BudgetForm, PlanChoiceForm, UsageForm
from apps.billing.models import Plan, UsageKind
from apps.core.charts import Chart, stacked_chart
from apps.core.errors import ServiceError
from apps.llm.pages import money
from apps.tenancy.audit import Actor
from apps.tenancy.decorators import page_allows, page_organization, require_action

KIND_LABELS = dict(UsageKind.choices)
# A service's field name -> the form's.
FORM_FIELDS = {"limit_usd": "budget_usd", "budget_usd": "budget_usd", "alert_thresholds": "alert_thresholds"}


# The usage chart ----------------------------------------------------------------------------------


def quantity_text(value: Decimal | int | float, unit: str = "") -> str:
    """A quantity in its unit: whole numbers with thousands separators, else two decimals."""
    amount = Decimal(str(value))
    text = f"{amount:,.0f}" if amount == amount.to_integral_value() else f"{amount:,.2f}"
    return f"{text} {unit}".strip()


def usage_chart(rows: list[dict[str, Any]], *, days: int, kind: str, today: date | None = None) -> Chart:
    """Cost per day stacked by kind; with one kind chosen, its quantity per day instead."""
    last = today or timezone.now().date()
    first = last - timedelta(days=days - 1)
    values: dict[date, dict[str, Decimal]] = {}
    for row in rows:
        value = row["quantity"] if kind else row["amount"]
        per_day = values.setdefault(row["day"], {})
        per_day[row["kind"]] = per_day.get(row["kind"], Decimal(0)) + value
    series = [value for value in UsageKind.values if any(value in per_day for per_day in values.values())]
    if kind:
        unit = selectors.KIND_UNITS.get(kind, "")
        title = f"{KIND_LABELS.get(kind, kind)} per day"
        return stacked_chart(
            values,
            series=series,
            labels=KIND_LABELS,
            first=first,
            last=last,
            title=title,
            value_text=lambda value: quantity_text(value, unit),
        )
    return stacked_chart(
        values,
        series=series,
        labels=KIND_LABELS,
        first=first,
        last=last,
        title="Cost per day, by kind of usage (USD)",
        value_text=money,
    )


# Reading what the page shows ------------------------------------------------------------------------


def _plan_row(plan: Plan, current: Plan, *, payments_ready: bool) -> dict[str, Any]:
    needs_payment = choices.payment_needed(plan)
    return {
        "plan": plan,
        "fee": money(plan.monthly_fee),
        "current": plan.pk == current.pk,
        "needs_payment": needs_payment,
        "choosable": payments_ready or not needs_payment,
        "limits": [
            (label, "Unlimited" if plan.limits.get(key) is None else quantity_text(plan.limits[key]))
            for key, label in LIMIT_LABELS.items()
        ],
    }


LIMIT_LABELS = {
    "members": "Members",
    "workspaces": "Workspaces",
    "concurrent_sandboxes": "Sandboxes running at once",
    "concurrent_agent_runs": "Agent runs at once",
    "monthly_tokens": "LLM tokens a month",
    "sandbox_hours": "Sandbox hours a month",
    "storage_gb": "Storage (GB)",
}


def _usage_context(request: HttpRequest, form: UsageForm) -> dict[str, Any]:
    organization = page_organization(request)
    days = (form.cleaned_data["days"] or 30) if form.is_valid() else 30
    kind = form.cleaned_data["kind"] if form.is_valid() else ""
    usage = selectors.UsageFilter(days=days, kind=kind)
    by_day = selectors.usage_by_day(organization=organization, usage=usage)
    by_kind = selectors.usage_by_kind(organization=organization, usage=usage)
    by_model = selectors.cost_by_model(organization=organization, usage=usage)
    by_user = selectors.cost_by_user(organization=organization, usage=usage)
    by_project = selectors.cost_by_project(organization=organization, usage=usage)
    return {
        "days": days,
        "kind": kind,
        "selected_days": str(days),
        "day_choices": [(str(value), f"Last {value} days") for value in (7, 30, 90)],
        "kind_choices": [("", "Every kind"), *UsageKind.choices],
        "usage_total": money(sum((row["amount"] for row in by_kind), Decimal(0))),
        "usage_empty": not by_day,
        "chart": usage_chart(by_day, days=days, kind=kind) if by_day else None,
        "by_kind": [
            {
                **row,
                "label": KIND_LABELS.get(row["kind"], row["kind"]),
                "quantity_text": quantity_text(row["quantity"], row["unit"]),
                "cost": money(row["amount"]),
            }
            for row in by_kind
        ],
        "by_model": [
            {
                **row,
                "input_text": quantity_text(row["input_tokens"]),
                "output_text": quantity_text(row["output_tokens"]),
                "cached_text": quantity_text(row["cached_tokens"]),
                "cost": money(row["amount"]),
            }
            for row in by_model
        ],
        "by_user": [{**row, "cost": money(row["amount"])} for row in by_user],
        "by_project": [
            {
                **row,
                "cost": money(row["amount"]),
                "href": _project_href(row["source_type"], row["source_id"]) if row.get("name") else "",
            }
            for row in by_project
        ],
    }


def _project_href(source_type: str, source_id: str) -> str:
    if source_type == "workspace":
        return f"/workspaces/{source_id}/"
    if source_type == "agent_run":
        return f"/agents/runs/{source_id}/"
    return ""


def _billing_page(
    request: HttpRequest,
    *,
    status: int = 200,
    usage_form: UsageForm | None = None,
    budget_form: BudgetForm | None = None,
    plan_error: str = "",
    plan_error_key: str = "",
) -> HttpResponse:
    organization = page_organization(request)
    usage_form = usage_form or UsageForm(request.GET)
    overview = selectors.account_overview(organization=organization)
    plans = selectors.plans_available(organization=organization)
    if overview.plan not in plans:
        plans = [overview.plan, *plans]
    payments_ready = stripe_adapter.configured()
    context = {
        "active": "billing",
        "overview": overview,
        "plan_fee": money(overview.plan.monthly_fee),
        "plans": [_plan_row(plan, overview.plan, payments_ready=payments_ready) for plan in plans],
        "payments_ready": payments_ready,
        "alerts": selectors.quota_alerts_this_month(organization=organization),
        "invoices": [
            {"invoice": invoice, "total": money(invoice.total), "paid": money(invoice.amount_paid)}
            for invoice in selectors.invoices_list(organization=organization)
        ],
        "may_manage": page_allows(request, "billing.manage"),
        "usage_form": usage_form,
        "budget_form": budget_form or BudgetForm(initial=overview.budget_initial()),
        "plan_error": plan_error,
        "plan_error_key": plan_error_key,
        **_usage_context(request, usage_form),
    }
    response = render(request, "billing/page.html", context, status=status)
    return response


@require_GET
@require_action("billing.view")
def billing_page(request: HttpRequest) -> HttpResponse:
    form = UsageForm(request.GET)
    return _billing_page(request, usage_form=form, status=200 if form.is_valid() else 400)


@require_POST
@require_action("billing.manage")
def checkout_page(request: HttpRequest) -> HttpResponse:
    """Choose a plan: a paid one goes through Stripe Checkout (a redirect to its page);
    a free one changes at once. Either is refused, naming what to reduce, when the
    organization uses more than the plan allows."""
    form = PlanChoiceForm(request.POST)
    if not form.is_valid():
        return _billing_page(request, status=400, plan_error="Choose a plan from the list.")
    organization = page_organization(request)
    plan = selectors.plan_for_organization(organization=organization, key=form.cleaned_data["plan"])
    if plan is None:
        return _billing_page(
            request, status=400, plan_error=f"There is no plan {form.cleaned_data['plan']!r} to choose."
        )
    base = request.build_absolute_uri("/billing/")
    try:
        choice = choices.plan_choose(
            actor=Actor.from_request(request),
            organization=organization,
            plan=plan,
            success_url=f"{base}checkout/success/?plan={plan.key}&session_id={{CHECKOUT_SESSION_ID}}",
            cancel_url=f"{base}checkout/cancel/",
        )
    except ServiceError as exc:
        return _billing_page(request, status=exc.status, plan_error=exc.message, plan_error_key=plan.key)
    if choice.checkout_url:
        return HttpResponseRedirect(choice.checkout_url)
    messages.success(request, f"{organization.name} is now on the {plan.name} plan.")
    return HttpResponseRedirect("/billing/")


@require_GET
@require_action("billing.view")
def checkout_success_page(request: HttpRequest) -> HttpResponse:
    """Back from Checkout. Stripe's webhook applies the plan (a Celery task), usually within
    a second or two: once it has, straight on to the billing page; until then a page that
    says so and looks again every two seconds."""
    organization = page_organization(request)
    overview = selectors.account_overview(organization=organization)
    wanted = request.GET.get("plan", "")[:50]
    if wanted and overview.plan.key == wanted:
        messages.success(request, f"Thank you: {organization.name} is now on the {overview.plan.name} plan.")
        return HttpResponseRedirect("/billing/")
    context = {"active": "billing", "overview": overview, "outcome": "success", "applied": not wanted}
    return render(request, "billing/checkout_return.html", context)


@require_GET
@require_action("billing.view")
def checkout_cancel_page(request: HttpRequest) -> HttpResponse:
    organization = page_organization(request)
    overview = selectors.account_overview(organization=organization)
    context = {"active": "billing", "overview": overview, "outcome": "cancel"}
    return render(request, "billing/checkout_return.html", context)


@require_POST
@require_action("billing.manage")
def portal_page(request: HttpRequest) -> HttpResponse:
    """Stripe's Customer Portal: cards, invoices, cancelling; it links back here."""
    try:
        url = choices.portal_url(
            actor=Actor.from_request(request),
            organization=page_organization(request),
            return_url=request.build_absolute_uri("/billing/"),
        )
    except ServiceError as exc:
        return _billing_page(request, status=exc.status, plan_error=exc.message)
    return HttpResponseRedirect(url)


@require_POST
@require_action("billing.manage")
def budget_page(request: HttpRequest) -> HttpResponse:
    form = BudgetForm(request.POST)
    if not form.is_valid():
        return _billing_page(request, status=400, budget_form=form)
    try:
        choices.budget_settings_set(
            actor=Actor.from_request(request),
            organization=page_organization(request),
            budget_usd=form.cleaned_data["budget_usd"],
            alert_thresholds=form.cleaned_data["alert_thresholds"],
        )
    except ServiceError as exc:
        field = FORM_FIELDS.get(exc.field or "", "budget_usd")
        form.add_error(field, exc.message)
        return _billing_page(request, status=exc.status, budget_form=form)
    budget = form.cleaned_data["budget_usd"]
    saved = f"a monthly budget of {money(budget)}" if budget is not None else "no monthly budget"
    messages.success(
        request,
        f"Saved: {saved}, alerts at {', '.join(f'{t}%' for t in form.cleaned_data['alert_thresholds'])}.",
    )
    return HttpResponseRedirect("/billing/#budget")
