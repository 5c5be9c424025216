"""Stripe's webhooks: POST /billing/stripe/webhook/ on the bare domain (config/urls_public.py).

The view does the least it can before answering, so Stripe gets its 200 fast:
1. verify the Stripe-Signature with the SDK (STRIPE_WEBHOOK_SECRET, within
   STRIPE_WEBHOOK_TOLERANCE_SECONDS); a bad or stale one is a 400 and nothing is written;
2. store the event in StripeEvent, unique by Stripe's event id: a replay or a duplicate
   delivery is acknowledged (200, "duplicate": true) and does nothing more;
3. enqueue billing.stripe_event_process once the row commits.

The Celery task applies it (stripe_event_process), in one transaction with marking the row
processed, so running it twice applies it once:
- customer.subscription.created / updated / deleted -> BillingAccount plan, status, period
  (subscriptions.subscription_apply; an event older than the state applied changes nothing);
- checkout.session.completed -> the organization's customer and subscription ids;
- invoice.* -> Invoice rows;
- any other type -> recorded as ignored, logged.
An event whose task was lost (a worker crash before it ran) is picked up again by the beat's
usage-report task (stripe_events_pending).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from apps.billing import stripe_adapter, subscriptions
from apps.billing.models import StripeEvent
from apps.core.errors import ServiceError

logger = logging.getLogger(__name__)

SUBSCRIPTION_EVENTS = {
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
}
# How long a received event may wait for its task before the beat enqueues it again.
PENDING_GRACE = timedelta(minutes=5)


@csrf_exempt  # Stripe signs its requests; it has no CSRF token to send.
@require_POST
def stripe_webhook(request: HttpRequest) -> JsonResponse:
    try:
        event = stripe_adapter.webhook_event_construct(
            payload=request.body, signature=request.headers.get("Stripe-Signature", "")
        )
        duplicate = not stripe_event_record(event=event)
    except ServiceError as exc:
        logger.warning("Stripe webhook refused: %s", exc.message)
        return JsonResponse({"error": {"code": exc.code, "message": exc.message}}, status=exc.status)
    return JsonResponse({"received": True, "duplicate": duplicate})


def stripe_event_record(*, event: dict[str, Any]) -> bool:
    """Stores a verified event; True if it is new (its processing is then enqueued on
    commit), False for one received before."""
    from apps.billing.tasks_stripe import stripe_event_process_task

    event_id = str(event.get("id") or "")
    if not event_id.startswith("evt_") or not isinstance(event.get("data"), dict):
        raise ServiceError("The body is not a Stripe event.", code="invalid_event")
    data_object = event["data"].get("object") or {}
    try:
        with transaction.atomic():
            StripeEvent.objects.create(
                event_id=event_id,
                type=str(event.get("type") or "")[:100],
                object_id=str(data_object.get("id") or "")[:100],
                created=int(event.get("created") or 0),
                payload=event,
            )
            # robust: a broker that cannot take the task is logged, and the row waits for the
            # beat's stripe_events_pending; Stripe still gets its 200 for a stored event.
            transaction.on_commit(lambda: stripe_event_process_task.delay(event_id), robust=True)
    except IntegrityError:
        return False
    return True


@transaction.atomic
def stripe_event_process(*, event_id: str) -> str:
    """Applies one stored event, once: its row is locked, and a processed one is left alone.
    Returns the outcome (also stored on the row)."""
    stored = StripeEvent.objects.select_for_update().filter(event_id=event_id).first()
    if stored is None:
        return "unknown event"
    if stored.processed_at is not None:
        return stored.outcome
    outcome = _apply(stored.type, stored.payload, stored.created)
    stored.processed_at = timezone.now()
    stored.outcome = outcome[:2000]
    stored.save(update_fields=["processed_at", "outcome"])
    return outcome


def _apply(event_type: str, event: dict[str, Any], created: int) -> str:
    data_object: dict[str, Any] = event["data"]["object"]
    if event_type in SUBSCRIPTION_EVENTS:
        return subscriptions.subscription_apply(
            subscription=data_object, version=created, deleted=event_type == "customer.subscription.deleted"
        )
    if event_type == "checkout.session.completed":
        return subscriptions.checkout_session_apply(session=data_object)
    if event_type.startswith("invoice."):
        return subscriptions.invoice_mirror(invoice=data_object, version=created)
    logger.info("Stripe event %s of type %s ignored: not one we handle", event.get("id"), event_type)
    return f"ignored: unhandled type {event_type}"


def stripe_events_pending(*, now: Any = None) -> int:
    """Enqueues events received more than PENDING_GRACE ago and still unprocessed (their
    task was lost); returns how many. Safe beside the tasks: processing is once per event."""
    from apps.billing.tasks_stripe import stripe_event_process_task

    cutoff = (now or timezone.now()) - PENDING_GRACE
    event_ids = list(
        StripeEvent.objects.filter(processed_at__isnull=True, received_at__lt=cutoff)
        .order_by("created")
        .values_list("event_id", flat=True)[:1000]
    )
    for event_id in event_ids:
        stripe_event_process_task.delay(event_id)
    return len(event_ids)
