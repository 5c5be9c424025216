"""What a billing manager chooses on the billing page or through /api/v1/billing/, one
function each, shared by both: a plan (Stripe Checkout for a paid one, a direct change
for a free one), the payment portal, and the budget with its alert thresholds.

They compose the services that own each part (apps/billing/services.py: plan changes,
downgrade checks, thresholds, the money budget; apps/billing/subscriptions.py: Stripe
Checkout and the portal), so the page and the API refuse the same things with the
same words."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.db import transaction

from apps.billing import services
from apps.billing.models import BillingAccount, Plan
from apps.billing.plans import billing_account_for
from apps.core.errors import Conflict
from apps.tenancy.audit import Actor
from apps.tenancy.models import Organization


@dataclass(frozen=True)
class PlanChoice:
    """Where the member goes next: Stripe's Checkout page (`checkout_url`), or nowhere
    (the plan changed at once)."""

    plan: Plan
    checkout_url: str = ""

    @property
    def changed(self) -> bool:
        return not self.checkout_url


def plan_choose(
    *, actor: Actor, organization: Organization, plan: Plan, success_url: str, cancel_url: str
) -> PlanChoice:
    """Choose `plan`. Refused first, naming what to reduce, when the organization has more
    than it allows (DowngradeBlocked, 409), so nobody pays for a plan they cannot use.
    A plan with a Stripe price goes through Checkout: the plan changes when Stripe's
    webhook says the subscription started. A plan without one (Free, pay as you go)
    changes at once, unless a paid subscription runs: that ends in the payment portal."""
    account = billing_account_for(organization)
    if account.plan_id == plan.pk:
        raise Conflict(
            f"{organization.name} is already on the {plan.name} plan.", code="plan_unchanged", field="plan"
        )
    problems = services.downgrade_problems(
        organization=organization,
        plan=plan,
        limit_overrides=account.limit_overrides or {},
        feature_overrides=account.feature_overrides or {},
    )
    if problems:
        raise services.DowngradeBlocked(" ".join(problem["message"] for problem in problems), reduce=problems)
    if payment_needed(plan):
        from apps.billing import subscriptions

        email = actor.user.email if actor.user is not None else ""
        session = subscriptions.checkout_session_create(
            organization=organization, plan=plan, success_url=success_url, cancel_url=cancel_url, email=email
        )
        return PlanChoice(plan=plan, checkout_url=session.url)
    if account.stripe_subscription_id and account.status != BillingAccount.Status.CANCELED:
        raise Conflict(
            f"{organization.name} pays for the {account.plan.name} plan through a subscription: cancel it in"
            f" the payment portal, and {organization.name} moves to the {plan.name} plan when it ends.",
            code="subscription_active",
            field="plan",
        )
    services.plan_change(actor=actor, organization=organization, plan=plan)
    return PlanChoice(plan=plan)


def payment_needed(plan: Plan) -> bool:
    """Whether choosing the plan goes through Stripe: anything with a fee, a Stripe price or
    metered prices (pay as you go bills usage to a card); Free and no-cost custom plans not."""
    if plan.kind == Plan.Kind.FREE:
        return False
    return bool(plan.stripe_price_id or plan.monthly_fee > 0 or plan.unit_prices)


def portal_url(*, actor: Actor, organization: Organization, return_url: str) -> str:
    """Stripe's Customer Portal for the organization (cards, invoices, cancelling)."""
    from apps.billing import subscriptions

    return subscriptions.portal_session_create(organization=organization, return_url=return_url)


@transaction.atomic
def budget_settings_set(
    *,
    actor: Actor,
    organization: Organization,
    budget_usd: Decimal | None,
    alert_thresholds: list[int] | None,
) -> None:
    """The monthly money budget (None: none) and the alert thresholds, together or not at
    all. `alert_thresholds` None leaves them as they are."""
    if budget_usd is None:
        services.organization_budget_clear(actor=actor, organization=organization)
    else:
        services.organization_budget_set(actor=actor, organization=organization, limit_usd=budget_usd)
    if alert_thresholds is not None:
        services.alert_thresholds_set(actor=actor, organization=organization, thresholds=alert_thresholds)
