"""Stripe subscriptions of organizations: the customer, Checkout, the Customer Portal, and
what Stripe's objects say mirrored into BillingAccount and Invoice.

Calls to Stripe go through apps/billing/stripe_adapter.py and raise its ServiceErrors
(StripeNotConfigured / StripeUnavailable: 503, StripeRefused: 502) with a message a page
can show. What a subscription costs is found in Stripe by price:
- the plan's base fee: Plan.stripe_price_id, else the active price whose lookup_key is the
  plan's key (e.g. "team");
- its metered usage: active prices whose lookup_key is "<plan key>_<usage kind>" (e.g.
  "payg_llm_input_tokens"), each backed by the Billing Meter of that kind (reporting.py).
A plan with neither cannot be bought through Checkout.

Mirroring is safe against Stripe's at-least-once, any-order delivery: each applied change
records the Stripe time it describes (BillingAccount.subscription_version,
Invoice.stripe_version), and an older one never overwrites a newer one.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.db import transaction

from apps.billing import stripe_adapter
from apps.billing.models import BillingAccount, Invoice, Plan, UsageKind
from apps.billing.plans import billing_account_for
from apps.core.errors import Invalid
from apps.tenancy.audit import Actor, audit_record
from apps.tenancy.models import Organization

logger = logging.getLogger(__name__)

FREE_PLAN_KEY = "free"
# Stripe's subscription statuses in ours (BillingAccount.Status).
STATUS_MAP = {
    "active": BillingAccount.Status.ACTIVE,
    "trialing": BillingAccount.Status.TRIALING,
    "past_due": BillingAccount.Status.PAST_DUE,
    "unpaid": BillingAccount.Status.PAST_DUE,
    "paused": BillingAccount.Status.PAST_DUE,
    "incomplete": BillingAccount.Status.INCOMPLETE,
    "incomplete_expired": BillingAccount.Status.CANCELED,
    "canceled": BillingAccount.Status.CANCELED,
}
LIVE_STATUSES = {BillingAccount.Status.ACTIVE, BillingAccount.Status.TRIALING, BillingAccount.Status.PAST_DUE}
# Two events of one second: an invoice's later states win over its earlier ones.
INVOICE_STATUS_RANK = {"draft": 0, "open": 1, "uncollectible": 2, "paid": 3, "void": 3}


@dataclass(frozen=True)
class CheckoutSession:
    id: str  # Stripe's cs_... id ("" when no Checkout was needed)
    url: str  # where to send the browser: Stripe's hosted page, or success_url


def _timestamp(value: Any) -> datetime | None:
    return datetime.fromtimestamp(int(value), tz=UTC) if value else None


def _cents(value: Any) -> Decimal:
    return (Decimal(int(value or 0)) / 100).quantize(Decimal("0.01"))


# --- the customer --------------------------------------------------------------------------------


def customer_for(*, organization: Organization, email: str = "") -> str:
    """The organization's Stripe customer id, created on first use and stored on its
    BillingAccount. The creation's idempotency key is the organization's, so two first uses
    at once (or a retry after a lost answer) get one customer."""
    account = billing_account_for(organization)
    if account.stripe_customer_id:
        return account.stripe_customer_id
    customer = stripe_adapter.customer_create(
        params={
            "name": organization.name,
            "email": email or None,
            "metadata": {"organization_id": str(organization.pk), "organization_slug": organization.slug},
        },
        # The organization's id and creation time: unique even across a database restored
        # from scratch (Stripe keeps a key 24 hours and refuses it with other parameters).
        idempotency_key=f"agentyard-customer-{organization.pk}-{int(organization.created_at.timestamp())}",
    )
    with transaction.atomic():
        account = billing_account_for(organization, lock=True)
        if not account.stripe_customer_id:
            account.stripe_customer_id = str(customer["id"])
            account.save(update_fields=["stripe_customer_id", "updated_at"])
    return account.stripe_customer_id


# --- checkout and the portal ---------------------------------------------------------------------


def plan_prices(*, plan: Plan) -> tuple[str, list[str]]:
    """The plan's base-fee price id ("" if none) and its metered prices' ids, from Stripe."""
    lookup = [plan.key] + [f"{plan.key}_{kind}" for kind in UsageKind.values]
    found = stripe_adapter.prices_by_lookup_key(lookup_keys=lookup)
    base = plan.stripe_price_id or str((found.get(plan.key) or {}).get("id") or "")
    metered = [str(found[key]["id"]) for key in lookup[1:] if key in found]
    return base, metered


def checkout_session_create(
    *,
    organization: Organization,
    plan: Plan,
    success_url: str,
    cancel_url: str,
    email: str = "",
) -> CheckoutSession:
    """Where to send the browser to subscribe `organization` to `plan`.

    Without a live subscription: a Stripe Checkout Session in subscription mode (the plan's
    base price, quantity 1, and its metered prices), for the organization's customer (made
    on first use). `url` is Stripe's hosted page; paying there sends the webhooks that put
    the organization on the plan (webhooks.py), then Stripe redirects to success_url
    (a literal "{CHECKOUT_SESSION_ID}" in it becomes the session's id). cancel_url is where
    its Cancel link goes.

    With a live subscription already: its items are switched to the plan's prices in place
    (Stripe prorates; no page to pay on), and `url` is success_url; the change arrives as
    customer.subscription.updated like any other.

    Raises Invalid (400, code "plan_not_purchasable") for a free plan or one with no Stripe
    price, and the adapter's errors when Stripe is not configured or fails."""
    if plan.kind == Plan.Kind.FREE:
        raise Invalid(f"The {plan.name} plan is free: there is nothing to pay.", code="plan_not_purchasable")
    base, metered = plan_prices(plan=plan)
    if not base and not metered:
        raise Invalid(
            f"The {plan.name} plan has no Stripe price yet, so it cannot be bought online. "
            "Ask us to set it up.",
            code="plan_not_purchasable",
        )
    account = billing_account_for(organization)
    if account.stripe_subscription_id and account.status in LIVE_STATUSES:
        subscription_plan_change(organization=organization, plan=plan, prices=(base, metered))
        return CheckoutSession(id="", url=success_url.replace("{CHECKOUT_SESSION_ID}", ""))
    customer = customer_for(organization=organization, email=email)
    metadata = {"organization_id": str(organization.pk), "plan": plan.key}
    line_items: list[dict[str, Any]] = [{"price": base, "quantity": 1}] if base else []
    line_items += [{"price": price} for price in metered]
    session = stripe_adapter.checkout_session_create(
        params={
            "mode": "subscription",
            "customer": customer,
            "line_items": line_items,
            "success_url": success_url,
            "cancel_url": cancel_url,
            "client_reference_id": str(organization.pk),
            "metadata": metadata,
            "subscription_data": {"metadata": metadata},
        }
    )
    return CheckoutSession(id=str(session["id"]), url=str(session["url"]))


def card_setup_session_create(
    *, organization: Organization, success_url: str, cancel_url: str
) -> CheckoutSession:
    """A Checkout Session in setup mode: the organization adds a card (for pay-as-you-go
    invoices) without subscribing to anything."""
    customer = customer_for(organization=organization)
    session = stripe_adapter.checkout_session_create(
        params={
            "mode": "setup",
            "customer": customer,
            "currency": "usd",
            "success_url": success_url,
            "cancel_url": cancel_url,
            "client_reference_id": str(organization.pk),
            "metadata": {"organization_id": str(organization.pk)},
        }
    )
    return CheckoutSession(id=str(session["id"]), url=str(session["url"]))


def portal_session_create(*, organization: Organization, return_url: str) -> str:
    """The URL of Stripe's Customer Portal for the organization (cards, invoices,
    cancelling), which links back to return_url. Makes the customer on first use."""
    customer = customer_for(organization=organization)
    session = stripe_adapter.portal_session_create(params={"customer": customer, "return_url": return_url})
    return str(session["url"])


def subscription_plan_change(
    *, organization: Organization, plan: Plan, prices: tuple[str, list[str]] | None = None
) -> None:
    """Switches the organization's live subscription to the plan's prices (base fee and
    metered), in place; Stripe prorates, and its customer.subscription.updated webhook
    applies the plan here. The idempotency key names the subscription and the plan, so a
    double click changes it once."""
    account = billing_account_for(organization)
    if not account.stripe_subscription_id:
        raise Invalid("The organization has no subscription to change.", code="no_subscription")
    base, metered = prices or plan_prices(plan=plan)
    subscription = stripe_adapter.subscription_retrieve(subscription_id=account.stripe_subscription_id)
    items: list[dict[str, Any]] = [
        {"id": item["id"], "deleted": True} for item in subscription["items"]["data"]
    ]
    # The items it has now name this change: a double click repeats it, a later change differs.
    current_items = ",".join(sorted(str(item["id"]) for item in subscription["items"]["data"]))
    if base:
        items.append({"price": base, "quantity": 1})
    items += [{"price": price} for price in metered]
    stripe_adapter.subscription_update(
        subscription_id=account.stripe_subscription_id,
        params={
            "items": items,
            "proration_behavior": "create_prorations",
            "metadata": {"organization_id": str(organization.pk), "plan": plan.key},
        },
        idempotency_key=f"agentyard-plan-{plan.key}-{hashlib.sha256(current_items.encode()).hexdigest()[:24]}",
    )


# --- mirroring Stripe's objects --------------------------------------------------------------------


def _account_for_customer(customer_id: str, metadata: dict[str, Any]) -> BillingAccount | None:
    """The account of a Stripe customer, locked; else the one the object's metadata names
    (our organization_id), which then learns its customer id."""
    account = None
    if customer_id:
        account = (
            BillingAccount.objects.select_for_update(of=("self",))
            .select_related("plan", "organization")
            .filter(stripe_customer_id=customer_id)
            .first()
        )
    if account is None and str(metadata.get("organization_id") or "").isdigit():
        organization = Organization.objects.filter(pk=int(metadata["organization_id"])).first()
        if organization is not None:
            account = billing_account_for(organization, lock=True)
            if customer_id and account.stripe_customer_id and account.stripe_customer_id != customer_id:
                return None  # the organization pays as another customer: not its object
            if customer_id and not account.stripe_customer_id:
                account.stripe_customer_id = customer_id
    return account


def _plan_for(subscription: dict[str, Any], organization: Organization) -> Plan | None:
    """The plan whose base price is on the subscription (its stripe_price_id, else a price
    whose lookup_key is the plan's key), else the one the subscription's metadata names."""
    prices = [item["price"] for item in subscription["items"]["data"]]
    plans = Plan.objects.filter(organization__isnull=True) | Plan.objects.filter(organization=organization)
    by_price = plans.filter(stripe_price_id__in=[str(price["id"]) for price in prices]).exclude(
        stripe_price_id=""
    )
    by_lookup_key = plans.filter(
        key__in=[str(price.get("lookup_key")) for price in prices if price.get("lookup_key")]
    )
    for found in (by_price.first(), by_lookup_key.first()):
        if found is not None:
            return found
    key = str((subscription.get("metadata") or {}).get("plan") or "")
    return plans.filter(key=key).first() if key else None


def _period(subscription: dict[str, Any]) -> tuple[datetime | None, datetime | None]:
    """The current period: on the items since API version 2025-03-31, on the subscription before."""
    items = subscription["items"]["data"]
    source = items[0] if items and items[0].get("current_period_end") else subscription
    return _timestamp(source.get("current_period_start")), _timestamp(source.get("current_period_end"))


def _account_state(account: BillingAccount) -> dict[str, Any]:
    return {
        "plan": account.plan.key,
        "status": account.status,
        "subscription": account.stripe_subscription_id,
        "cancel_at_period_end": account.cancel_at_period_end,
        "current_period_end": account.current_period_end.isoformat() if account.current_period_end else None,
    }


@transaction.atomic
def subscription_apply(*, subscription: dict[str, Any], version: int, deleted: bool = False) -> str:
    """Mirrors a subscription's state (from a customer.subscription.* event of Stripe time
    `version`) into its organization's BillingAccount, unless a newer one was applied
    already. Returns what happened, in words (StripeEvent.outcome)."""
    customer_id = str(subscription.get("customer") or "")
    account = _account_for_customer(customer_id, subscription.get("metadata") or {})
    if account is None:
        return f"ignored: no organization has customer {customer_id}"
    subscription_id = str(subscription["id"])
    status = STATUS_MAP.get(str(subscription.get("status")), BillingAccount.Status.INCOMPLETE)
    ended = deleted or status == BillingAccount.Status.CANCELED
    current = account.stripe_subscription_id
    if version < account.subscription_version:
        return f"ignored: older ({version}) than the state applied ({account.subscription_version})"
    if (
        version == account.subscription_version
        and current == subscription_id
        and account.status == BillingAccount.Status.CANCELED
        and not ended
    ):
        return "ignored: the subscription ended in the same second"
    if ended and current and current != subscription_id and account.status in LIVE_STATUSES:
        return f"ignored: {subscription_id} ended, but the organization is on {current}"
    if (
        status == BillingAccount.Status.INCOMPLETE
        and current
        and current != subscription_id
        and account.status in LIVE_STATUSES
    ):
        return f"ignored: {subscription_id} is not paid yet; the organization stays on {current}"
    before = _account_state(account)
    if ended:
        account.plan = Plan.objects.filter(key=FREE_PLAN_KEY).first() or account.plan
        account.status = BillingAccount.Status.CANCELED
        account.cancel_at_period_end = False
    else:
        plan = _plan_for(subscription, account.organization)
        if status == BillingAccount.Status.INCOMPLETE:
            pass  # not paid yet: the plan comes with the update that makes it active
        elif plan is not None:
            account.plan = plan
        else:
            logger.warning("subscription %s has no price of a known plan; the plan stays", subscription_id)
        account.status = status
        account.cancel_at_period_end = bool(subscription.get("cancel_at_period_end"))
    account.stripe_subscription_id = subscription_id
    account.current_period_start, account.current_period_end = _period(subscription)
    account.subscription_version = version
    account.save()
    after = _account_state(account)
    if after == before:
        return "unchanged"
    audit_record(
        actor=Actor.system(),
        organization=account.organization,
        action="billing.subscription_changed",
        target=account,
        before=before,
        after=after,
    )
    transaction.on_commit(lambda: _quota_cache_clear(account.organization_id))
    return f"applied: {before['plan']} {before['status']} -> {after['plan']} {after['status']}"


def _quota_cache_clear(organization_id: int) -> None:
    from apps.billing.quotas import quota_snapshots_clear

    quota_snapshots_clear(organization_id=organization_id)


@transaction.atomic
def checkout_session_apply(*, session: dict[str, Any]) -> str:
    """A completed Checkout Session: the organization (its client_reference_id) learns its
    customer id, and the subscription's id if none is applied yet (the subscription's own
    events set the plan and status)."""
    reference = str(session.get("client_reference_id") or "")
    metadata = dict(session.get("metadata") or {})
    if reference.isdigit():
        metadata.setdefault("organization_id", reference)
    account = _account_for_customer(str(session.get("customer") or ""), metadata)
    if account is None:
        return f"ignored: no organization for checkout session {session.get('id')}"
    customer_id = str(session.get("customer") or "")
    if customer_id and not account.stripe_customer_id:
        account.stripe_customer_id = customer_id
    subscription_id = str(session.get("subscription") or "")
    if subscription_id and not account.stripe_subscription_id:
        account.stripe_subscription_id = subscription_id
    account.save()
    return f"linked {customer_id or 'no customer'} {subscription_id or ''}".strip()


@transaction.atomic
def invoice_mirror(*, invoice: dict[str, Any], version: int) -> str:
    """Upserts a Stripe invoice into Invoice for display (amounts in dollars), unless a
    newer version of it was mirrored already."""
    customer_id = str(invoice.get("customer") or "")
    account = BillingAccount.objects.filter(stripe_customer_id=customer_id).only("organization_id").first()
    if account is None:
        return f"ignored: no organization has customer {customer_id}"
    stripe_id = str(invoice["id"])
    status = str(invoice.get("status") or "draft")
    existing = Invoice.objects.select_for_update().filter(stripe_invoice_id=stripe_id).first()
    if existing is not None:
        if version < existing.stripe_version:
            return f"ignored: older ({version}) than the invoice mirrored ({existing.stripe_version})"
        if version == existing.stripe_version and INVOICE_STATUS_RANK.get(
            status, 0
        ) < INVOICE_STATUS_RANK.get(existing.status, 0):
            return f"ignored: {status} is earlier than {existing.status} in the same second"
    fields = {
        "organization_id": account.organization_id,
        "number": str(invoice.get("number") or ""),
        "status": status,
        "currency": str(invoice.get("currency") or "usd"),
        "amount_due": _cents(invoice.get("amount_due")),
        "amount_paid": _cents(invoice.get("amount_paid")),
        "total": _cents(invoice.get("total")),
        "period_start": _timestamp(invoice.get("period_start")),
        "period_end": _timestamp(invoice.get("period_end")),
        "hosted_invoice_url": str(invoice.get("hosted_invoice_url") or ""),
        "invoice_pdf": str(invoice.get("invoice_pdf") or ""),
        "created": _timestamp(invoice.get("created")) or datetime.now(tz=UTC),
        "stripe_version": version,
    }
    Invoice.objects.update_or_create(stripe_invoice_id=stripe_id, defaults=fields)
    return f"invoice {stripe_id} {status}"


def invoices_sync(*, organization: Organization) -> int:
    """Mirrors the organization's invoices as Stripe lists them now (after a missed webhook,
    say); returns how many. Their version is now, so older events arriving later lose."""
    account = billing_account_for(organization)
    if not account.stripe_customer_id:
        return 0
    invoices = stripe_adapter.invoices_list(customer_id=account.stripe_customer_id)
    now = int(datetime.now(tz=UTC).timestamp())
    for invoice in invoices:
        invoice_mirror(invoice=invoice, version=now)
    return len(invoices)
