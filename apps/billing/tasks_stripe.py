"""Billing's Stripe tasks (imported by apps/billing/tasks.py so Celery finds them). Thin:
the work and its once-only guarantees live in webhooks.py and reporting.py."""

from typing import Any

from celery import shared_task

from apps.billing.reporting import usage_report_run
from apps.billing.webhooks import stripe_event_process


@shared_task(name="billing.stripe_event_process")
def stripe_event_process_task(event_id: str) -> str:
    """Applies one received webhook event; a second run finds it processed and does nothing."""
    return stripe_event_process(event_id=event_id)


@shared_task(name="billing.stripe_usage_report")
def stripe_usage_report_task() -> dict[str, Any]:
    """The beat's usage report (CELERY_BEAT_SCHEDULE "billing-stripe-usage-report"): finished
    hours of usage to Stripe's Billing Meters, retried with backoff; safe to run twice."""
    return usage_report_run()
