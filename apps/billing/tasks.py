"""Billing's Celery tasks. The periodic ones (beat entries in config/settings/base.py)
measure usage the ledger cannot see happen: sandboxes still running, and storage.
Each is safe to run twice (apps/billing/ledger.py says how)."""

from decimal import Decimal

from celery import shared_task

from apps.billing.ledger import sandbox_seconds_account, storage_measure


@shared_task(name="billing.sandbox_seconds_account")
def sandbox_seconds_account_task() -> dict[str, int]:
    """Running sandboxes' seconds up to the current interval's start, per organization."""
    return sandbox_seconds_account()


@shared_task(name="billing.storage_measure")
def storage_measure_task() -> dict[str, str]:
    """Each organization's storage as GB-hours since its last measurement."""
    written: dict[str, Decimal] = storage_measure()
    return {slug: str(quantity) for slug, quantity in written.items()}


# Stripe: webhook processing and usage reporting (tasks_stripe.py).
from apps.billing import tasks_stripe  # noqa: E402, F401
