"""Creates in Stripe what the plans need (`manage.py billing_stripe_setup`), so connecting
an account is one command rather than a page of clicks (README, "Connecting Stripe"):

- a Billing Meter per usage kind (event name STRIPE_METER_EVENT_PREFIX + kind, sum);
- per paid plan (not free, not archived) a product, and
  - its monthly fee, when it has one and no Plan.stripe_price_id: a recurring licensed
    price with lookup key = the plan's key;
  - per usage kind it prices (Plan.unit_prices, USD per unit): a recurring metered price
    backed by the kind's meter, lookup key "<plan>_<kind>"; what the plan includes
    (Plan.included) is a free first tier of a graduated price, the unit price after it.

What exists (found by event name and lookup key) is left alone, so running it twice
creates nothing the second time; a price changed in the back office later needs a new
price in Stripe (Stripe's prices are immutable) and the old one's lookup key moved.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from apps.billing import stripe_adapter
from apps.billing.models import Plan, UsageKind
from apps.billing.reporting import event_name_for


@dataclass(frozen=True)
class CatalogueLine:
    what: str  # "meter", "product", "price"
    name: str  # the meter's event name, the plan's key, the price's lookup key
    stripe_id: str
    created: bool


def _cents(usd: Any) -> str:
    """USD per unit as Stripe's unit_amount_decimal (cents, at most 12 decimal places)."""
    return format((Decimal(str(usd)) * 100).quantize(Decimal("1e-12")).normalize(), "f")


def stripe_catalogue_sync() -> list[CatalogueLine]:
    lines: list[CatalogueLine] = []
    meters = {str(m["event_name"]): m for m in stripe_adapter.meters_list() if m.get("status") == "active"}
    for kind in UsageKind.values:
        name = event_name_for(kind)
        meter = meters.get(name)
        created = meter is None
        if meter is None:
            meter = stripe_adapter.meter_create(
                params={
                    "display_name": f"Agentyard {UsageKind(kind).label}",
                    "event_name": name,
                    "default_aggregation": {"formula": "sum"},
                },
                idempotency_key=f"agentyard-meter-{name}",
            )
            meters[name] = meter
        lines.append(CatalogueLine("meter", name, str(meter["id"]), created))
    plans = Plan.objects.filter(archived=False).exclude(kind=Plan.Kind.FREE).order_by("position", "key")
    for plan in plans:
        lines += _plan_sync(plan, meters)
    return lines


def _plan_sync(plan: Plan, meters: dict[str, dict[str, Any]]) -> list[CatalogueLine]:
    wanted: dict[str, dict[str, Any]] = {}
    if plan.monthly_fee > 0 and not plan.stripe_price_id:
        wanted[plan.key] = {
            "unit_amount": int((plan.monthly_fee * 100).to_integral_value()),
            "recurring": {"interval": "month"},
        }
    for kind, usd in sorted((plan.unit_prices or {}).items()):
        if kind not in UsageKind.values:
            continue
        recurring = {
            "interval": "month",
            "usage_type": "metered",
            "meter": meters[event_name_for(kind)]["id"],
        }
        included = int(Decimal(str((plan.included or {}).get(kind) or 0)))
        if included > 0:
            wanted[f"{plan.key}_{kind}"] = {
                "billing_scheme": "tiered",
                "tiers_mode": "graduated",
                "tiers": [
                    {"up_to": included, "unit_amount_decimal": "0"},
                    {"up_to": "inf", "unit_amount_decimal": _cents(usd)},
                ],
                "recurring": recurring,
            }
        else:
            wanted[f"{plan.key}_{kind}"] = {"unit_amount_decimal": _cents(usd), "recurring": recurring}
    if not wanted:
        return []
    existing = stripe_adapter.prices_by_lookup_key(lookup_keys=list(wanted))
    lines = [CatalogueLine("price", key, str(price["id"]), False) for key, price in existing.items()]
    missing = [key for key in wanted if key not in existing]
    if not missing:
        return lines
    product_id = next((str(price["product"]) for price in existing.values()), "")
    if not product_id:
        product = stripe_adapter.product_create(
            params={"name": f"Agentyard {plan.name}", "metadata": {"plan": plan.key}},
            idempotency_key=f"agentyard-product-{plan.key}-{int(plan.created_at.timestamp())}",
        )
        product_id = str(product["id"])
        lines.append(CatalogueLine("product", plan.key, product_id, True))
    for key in missing:
        price = stripe_adapter.price_create(
            params={"product": product_id, "currency": "usd", "lookup_key": key, **wanted[key]},
        )
        lines.append(CatalogueLine("price", key, str(price["id"]), True))
    return lines
