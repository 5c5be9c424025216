"""Billing under /api/v1/billing/: the plan with its limits and what is used of each, usage
by day and kind (filtered by kind, model and source), cost by model, person and project,
invoices, the plans the organization may choose, Checkout to choose one, and the monthly
budget with its alert thresholds. Thin: reads through apps/billing/selectors.py, writes
through apps/billing/choices.py (CORE's services and STRIPE's subscriptions), each view
naming its action (billing.view / billing.manage).

The routes carry no URL parameters (the plan is in the body): plan keys are the same in
every organization, so a path naming one would not say whose it is."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.billing import choices, selectors
from apps.billing.forms import budget_parse, thresholds_parse
from apps.billing.models import Invoice, Plan, UsageKind, UsageSource
from apps.core.errors import Invalid, ServiceError
from apps.core.openapi import ApiError
from apps.tenancy.api import StrictSerializer
from apps.tenancy.audit import Actor
from apps.tenancy.models import Organization


def _tenant(request: Request) -> Organization:
    organization: Organization = request._request.tenant  # type: ignore[attr-defined]
    return organization


def _actor(request: Request) -> Actor:
    return Actor.from_request(request._request)


def _usd(help_text: str = "US dollars.", **kwargs: Any) -> serializers.DecimalField:
    return serializers.DecimalField(
        max_digits=20, decimal_places=8, coerce_to_string=True, help_text=help_text, **kwargs
    )


# Plans ---------------------------------------------------------------------------------------------


class BillingPlanOut(serializers.Serializer[Any]):
    key = serializers.CharField()
    name = serializers.CharField()
    kind = serializers.ChoiceField(choices=Plan.Kind.choices)
    description = serializers.CharField(allow_blank=True)
    monthly_fee = serializers.DecimalField(max_digits=12, decimal_places=2, help_text="US dollars a month.")
    features = serializers.ListField(child=serializers.CharField())
    limits = serializers.DictField(
        child=serializers.FloatField(allow_null=True),
        help_text="Limit -> number; null or missing: unlimited.",
    )
    included = serializers.DictField(
        child=serializers.FloatField(), help_text="Usage kind -> quantity a month the fee covers."
    )
    unit_prices = serializers.DictField(
        child=serializers.CharField(), help_text="Usage kind -> US dollars per unit beyond what is included."
    )
    custom = serializers.SerializerMethodField(help_text="Made for this organization alone.")

    def get_custom(self, plan: Plan) -> bool:
        return plan.organization_id is not None


class PlanList(APIView):
    actions = {"GET": "billing.view"}

    @extend_schema(
        responses=BillingPlanOut(many=True),
        operation_id="billing_plans_list",
        description="The plans the organization may choose: the public catalogue and its own custom plans.",
    )
    def get(self, request: Request) -> Response:
        return Response(
            BillingPlanOut(selectors.plans_available(organization=_tenant(request)), many=True).data
        )


# The account: plan, status, period, limits and usage ------------------------------------------------


class BillingLimitOut(serializers.Serializer[Any]):
    key = serializers.CharField()
    # Serializer.label is only a class attribute's name clash; DRF's metaclass takes it as a field.
    label = serializers.CharField()  # type: ignore[assignment]
    used = serializers.FloatField()
    limit = serializers.FloatField(allow_null=True, help_text="null: unlimited.")
    percent = serializers.IntegerField(allow_null=True, help_text="Share used; null when unlimited.")


class BillingUsageKindOut(serializers.Serializer[Any]):
    kind = serializers.CharField()
    unit = serializers.CharField()
    quantity = serializers.DecimalField(max_digits=24, decimal_places=6, coerce_to_string=True)
    amount_usd = _usd(source="amount")


class BillingAccountOut(serializers.Serializer[Any]):
    plan = BillingPlanOut()
    status = serializers.ChoiceField(choices=["active", "trialing", "past_due", "canceled", "incomplete"])
    period_start = serializers.DateTimeField()
    period_end = serializers.DateTimeField()
    subscribed = serializers.BooleanField(help_text="Paid through a Stripe subscription.")
    cancel_at_period_end = serializers.BooleanField()
    limits = BillingLimitOut(many=True)
    period_usage = BillingUsageKindOut(many=True, help_text="Usage since the period started, per kind.")
    period_cost_usd = _usd(
        help_text="Usage since the period started, at list prices, before what the plan includes."
    )
    budget_usd = serializers.DecimalField(
        max_digits=16, decimal_places=4, allow_null=True, help_text="The monthly LLM budget; null: none."
    )
    budget_spent_usd = _usd()
    alert_thresholds = serializers.ListField(child=serializers.IntegerField())


def _account_data(organization: Organization) -> dict[str, Any]:
    overview = selectors.account_overview(organization=organization)
    return {
        "plan": overview.plan,
        "status": overview.status,
        "period_start": overview.period_start,
        "period_end": overview.period_end,
        "subscribed": overview.subscribed,
        "cancel_at_period_end": overview.cancel_at_period_end,
        "limits": [
            {
                "key": limit.key,
                "label": limit.label,
                "used": limit.used,
                "limit": limit.limit,
                "percent": limit.percent,
            }
            for limit in overview.limits
        ],
        "period_usage": selectors.usage_by_kind(
            organization=organization, usage=selectors.UsageFilter(days=overview.period_days)
        ),
        "period_cost_usd": overview.period_cost,
        "budget_usd": overview.budget_usd,
        "budget_spent_usd": overview.budget_spent,
        "alert_thresholds": overview.alert_thresholds,
    }


class AccountView(APIView):
    actions = {"GET": "billing.view"}

    @extend_schema(
        responses=BillingAccountOut,
        operation_id="billing_account",
        description="The plan, its status and period, each limit with what is used of it, and the budget.",
    )
    def get(self, request: Request) -> Response:
        return Response(BillingAccountOut(_account_data(_tenant(request))).data)


# Usage ---------------------------------------------------------------------------------------------


class BillingUsageQuery(StrictSerializer):
    days = serializers.IntegerField(min_value=1, max_value=selectors.USAGE_DAYS_MAX, default=30)
    kind = serializers.ChoiceField(choices=UsageKind.choices, required=False, allow_blank=True, default="")
    model = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    source_type = serializers.ChoiceField(
        choices=UsageSource.choices, required=False, allow_blank=True, default=""
    )
    source_id = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")


class BillingUsageDayOut(serializers.Serializer[Any]):
    day = serializers.DateField()
    kind = serializers.CharField()
    unit = serializers.CharField()
    quantity = serializers.DecimalField(max_digits=24, decimal_places=6, coerce_to_string=True)
    amount_usd = _usd(source="amount")


class BillingUsageModelOut(serializers.Serializer[Any]):
    model = serializers.CharField()
    input_tokens = serializers.DecimalField(max_digits=24, decimal_places=0, coerce_to_string=True)
    output_tokens = serializers.DecimalField(max_digits=24, decimal_places=0, coerce_to_string=True)
    cached_tokens = serializers.DecimalField(max_digits=24, decimal_places=0, coerce_to_string=True)
    amount_usd = _usd(source="amount")


class BillingUsageUserOut(serializers.Serializer[Any]):
    user_id = serializers.IntegerField(allow_null=True, help_text="null: no person (API keys, storage).")
    email = serializers.CharField(allow_blank=True)
    amount_usd = _usd(source="amount")


class BillingUsageProjectOut(serializers.Serializer[Any]):
    source_type = serializers.ChoiceField(choices=["agent_run", "workspace"])
    source_id = serializers.CharField()
    name = serializers.CharField(allow_blank=True, help_text="Blank when the run or workspace is gone.")
    amount_usd = _usd(source="amount")


class BillingUsageOut(serializers.Serializer[Any]):
    days = serializers.IntegerField()
    total_usd = _usd()
    by_day = BillingUsageDayOut(many=True, help_text="Per UTC day and kind.")
    by_kind = BillingUsageKindOut(many=True)
    by_model = BillingUsageModelOut(many=True)
    by_user = BillingUsageUserOut(many=True)
    by_project = BillingUsageProjectOut(many=True, help_text="Per agent run and workspace.")


class UsageView(APIView):
    actions = {"GET": "billing.view"}

    @extend_schema(
        parameters=[BillingUsageQuery],
        responses=BillingUsageOut,
        operation_id="billing_usage",
        description="Metered usage over the last `days` days (UTC), at list prices: per day and kind,"
        " per kind, model, person and project (agent run or workspace). Filters narrow every part.",
    )
    def get(self, request: Request) -> Response:
        query = BillingUsageQuery(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        organization = _tenant(request)
        usage = selectors.UsageFilter(**query.validated_data)
        by_kind = selectors.usage_by_kind(organization=organization, usage=usage)
        data = {
            "days": usage.days,
            "total_usd": sum((row["amount"] for row in by_kind), Decimal(0)),
            "by_day": selectors.usage_by_day(organization=organization, usage=usage),
            "by_kind": by_kind,
            "by_model": selectors.cost_by_model(organization=organization, usage=usage),
            "by_user": selectors.cost_by_user(organization=organization, usage=usage),
            "by_project": selectors.cost_by_project(organization=organization, usage=usage),
        }
        return Response(BillingUsageOut(data).data)


# Invoices ------------------------------------------------------------------------------------------


class BillingInvoiceOut(serializers.ModelSerializer[Invoice]):
    class Meta:
        model = Invoice
        fields = (
            "stripe_invoice_id",
            "number",
            "status",
            "currency",
            "amount_due",
            "amount_paid",
            "total",
            "period_start",
            "period_end",
            "hosted_invoice_url",
            "invoice_pdf",
            "created",
        )


class InvoiceList(APIView):
    actions = {"GET": "billing.view"}

    @extend_schema(
        responses=BillingInvoiceOut(many=True),
        operation_id="billing_invoices_list",
        description="Stripe's invoices for the organization, newest first (the last 100).",
    )
    def get(self, request: Request) -> Response:
        return Response(
            BillingInvoiceOut(selectors.invoices_list(organization=_tenant(request)), many=True).data
        )


# Budget --------------------------------------------------------------------------------------------


class BillingBudgetIn(StrictSerializer):
    budget_usd = serializers.JSONField(
        allow_null=True,
        help_text='The monthly LLM budget in US dollars, a number or a string ("250.00"); null: none.',
    )
    alert_thresholds = serializers.JSONField(
        required=False,
        help_text="Percent of each limit and of the budget at which managers are alerted, e.g."
        " [50, 80, 100]; left out: unchanged.",
    )


class BudgetView(APIView):
    actions = {"PUT": "billing.manage"}

    @extend_schema(
        request=BillingBudgetIn,
        responses={200: OpenApiResponse(BillingAccountOut, description="The account after the change.")},
        operation_id="billing_budget_set",
    )
    def put(self, request: Request) -> Response:
        data = BillingBudgetIn(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            budget = budget_parse(data.validated_data["budget_usd"])
        except ValueError as exc:
            raise Invalid(str(exc), field="budget_usd") from None
        thresholds = None
        if "alert_thresholds" in data.validated_data:
            try:
                thresholds = thresholds_parse(data.validated_data["alert_thresholds"])
            except ValueError as exc:
                raise Invalid(str(exc), field="alert_thresholds") from None
        organization = _tenant(request)
        try:
            choices.budget_settings_set(
                actor=_actor(request),
                organization=organization,
                budget_usd=budget,
                alert_thresholds=thresholds,
            )
        except ServiceError as exc:
            if exc.field == "limit_usd":
                exc.field = "budget_usd"
            raise
        return Response(BillingAccountOut(_account_data(organization)).data)


# Checkout ------------------------------------------------------------------------------------------


class BillingCheckoutIn(StrictSerializer):
    plan = serializers.SlugField(max_length=50, help_text="The key of a plan from GET /api/v1/billing/plans.")
    success_url = serializers.URLField(
        required=False, max_length=500, help_text="Where Stripe sends the browser after paying."
    )
    cancel_url = serializers.URLField(required=False, max_length=500)


class BillingCheckoutOut(serializers.Serializer[Any]):
    url = serializers.CharField(
        allow_blank=True,
        help_text="Stripe's Checkout page to send the person to; blank when the plan changed.",
    )
    plan = serializers.CharField(help_text="The plan chosen.")
    changed = serializers.BooleanField(help_text="True: the plan changed at once (no payment needed).")


class CheckoutView(APIView):
    actions = {"POST": "billing.manage"}

    @extend_schema(
        request=BillingCheckoutIn,
        responses={
            200: BillingCheckoutOut,
            502: OpenApiResponse(ApiError, description="Stripe refused the request (`stripe_refused`)."),
            503: OpenApiResponse(
                ApiError, description="Stripe is not set up on this platform, or cannot be reached."
            ),
        },
        operation_id="billing_checkout",
        description="Choose a plan. A paid plan answers Stripe Checkout's `url` (the plan changes when"
        " Stripe confirms the payment); a free one changes at once. 409 `downgrade_blocked` names what"
        " to reduce when the organization uses more than the plan allows.",
    )
    def post(self, request: Request) -> Response:
        data = BillingCheckoutIn(data=request.data)
        data.is_valid(raise_exception=True)
        organization = _tenant(request)
        plan = selectors.plan_for_organization(organization=organization, key=data.validated_data["plan"])
        if plan is None:
            raise Invalid(f"There is no plan {data.validated_data['plan']!r} to choose.", field="plan")
        base = request._request.build_absolute_uri("/billing/")
        choice = choices.plan_choose(
            actor=_actor(request),
            organization=organization,
            plan=plan,
            success_url=data.validated_data.get(
                "success_url", f"{base}checkout/success/?plan={plan.key}&session_id={{CHECKOUT_SESSION_ID}}"
            ),
            cancel_url=data.validated_data.get("cancel_url", f"{base}checkout/cancel/"),
        )
        return Response(
            BillingCheckoutOut({"url": choice.checkout_url, "plan": plan.key, "changed": choice.changed}).data
        )
