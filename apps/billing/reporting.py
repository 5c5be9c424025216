"""Usage to Stripe Billing Meters: the ledger's hourly roll-ups become UsageReport rows, and
those are sent as meter events until Stripe has taken each one.

1. usage_reports_prepare: for every finished hour (ended STRIPE_USAGE_GRACE ago) of the last
   LOOKBACK, every organization with a Stripe customer and every usage kind, the hour's
   quantity (UsageHourly summed over models and sources) minus what reports of that hour
   already carry becomes a new report. Its idempotency key is deterministic,
   "<organization>:<kind>:<hour>:<n>" (n = the reports of that hour before it, normally 0;
   usage written late for an hour already reported gets n = 1, 2, ...), and unique in the
   table, so preparing twice makes no second report.
2. usage_reports_send: reports due (pending, next_attempt_at passed) go to Stripe in a
   batch, one meter event each (event_name STRIPE_METER_EVENT_PREFIX + kind, value the
   quantity, timestamp the hour's start, identifier and Idempotency-Key the report's key).
   - taken (or refused as an identifier Stripe already holds: a send whose answer was lost)
     -> sent;
   - Stripe unreachable, timing out, rate limiting or failing (5xx) -> still pending,
     attempts + 1, next_attempt_at backed off exponentially (STRIPE_USAGE_RETRY_BASE_SECONDS
     doubled per attempt, at most STRIPE_USAGE_RETRY_CAP_SECONDS); after three such failures
     in a row the batch stops (Stripe is down; the rest wait for the next run);
   - refused (4xx: no such meter or customer) -> failed, with Stripe's message in last_error,
     for a person to fix; usage_reports_retry puts them back in line.
So usage is never lost, only delayed, and never counted twice: the key is the same on
every attempt, Stripe replays an Idempotency-Key's first answer and refuses an identifier
it has seen.

usage_report_run (the beat task billing.stripe_usage_report, every
STRIPE_USAGE_REPORT_SECONDS) does both, and enqueues webhook events whose task was lost.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from apps.billing import stripe_adapter
from apps.billing.models import BillingAccount, UsageHourly, UsageKind, UsageReport

logger = logging.getLogger(__name__)

# Usage of an hour may still be written this long after it ends (a metering flush, a stop).
STRIPE_USAGE_GRACE = timedelta(minutes=10)
# How far back hours are (re)considered; Stripe refuses meter events older than 35 days.
LOOKBACK = timedelta(hours=48)
# Stripe keeps at most 15 significant digits of a value.
QUANTUM = Decimal("0.000001")
CONSECUTIVE_FAILURES_TO_STOP = 3


@dataclass
class SendResult:
    sent: int = 0
    retrying: int = 0
    failed: int = 0
    skipped: str = ""
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "retrying": self.retrying,
            "failed": self.failed,
            "skipped": self.skipped,
            "errors": self.errors[:10],
        }


def event_name_for(kind: str) -> str:
    return f"{settings.STRIPE_METER_EVENT_PREFIX}{kind}"


def _hour_floor(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def report_key(*, organization_id: int, kind: str, hour: datetime, sequence: int = 0) -> str:
    return f"{organization_id}:{kind}:{_hour_floor(hour):%Y-%m-%dT%H}:{sequence}"


@transaction.atomic
def usage_reports_prepare(*, now: datetime | None = None) -> int:
    """Makes the reports of finished hours not yet (fully) reported; returns how many."""
    now = now or timezone.now()
    until = _hour_floor(now - STRIPE_USAGE_GRACE)  # hours starting before this have ended
    since = _hour_floor(now - LOOKBACK)
    customers = dict(
        BillingAccount.objects.exclude(stripe_customer_id="").values_list(
            "organization_id", "stripe_customer_id"
        )
    )
    if not customers:
        return 0
    used = (
        UsageHourly.objects.filter(organization_id__in=list(customers), hour__gte=since, hour__lt=until)
        .values("organization_id", "kind", "hour")
        .annotate(total=Sum("quantity"))
    )
    reported: dict[tuple[int, str, str], tuple[Decimal, int]] = defaultdict(lambda: (Decimal(0), 0))
    for report in UsageReport.objects.filter(
        organization_id__in=list(customers), created_at__gte=since - LOOKBACK
    ).values("organization_id", "kind", "covers", "quantity"):
        hour_text = str((report["covers"] or {}).get("hour") or "")
        key = (report["organization_id"], report["kind"], hour_text)
        quantity, count = reported[key]
        reported[key] = (quantity + report["quantity"], count + 1)
    made = []
    for row in used:
        if row["kind"] not in UsageKind.values:
            continue
        hour = _hour_floor(row["hour"])
        hour_text = hour.isoformat()
        already, count = reported[(row["organization_id"], row["kind"], hour_text)]
        missing = (Decimal(row["total"] or 0) - already).quantize(QUANTUM)
        if missing <= 0:
            continue
        made.append(
            UsageReport(
                organization_id=row["organization_id"],
                kind=row["kind"],
                event_name=event_name_for(row["kind"]),
                quantity=missing,
                idempotency_key=report_key(
                    organization_id=row["organization_id"], kind=row["kind"], hour=hour, sequence=count
                ),
                covers={"hour": hour_text, "reported_before": str(already)},
            )
        )
    # A report made by a run beside this one has the same key: the database keeps one.
    created = UsageReport.objects.bulk_create(made, ignore_conflicts=True)
    return len(created)


def _backoff(attempts: int) -> timedelta:
    base = int(settings.STRIPE_USAGE_RETRY_BASE_SECONDS)
    cap = int(settings.STRIPE_USAGE_RETRY_CAP_SECONDS)
    return timedelta(seconds=min(cap, base * 2 ** max(0, attempts - 1)))


def _due(now: datetime, limit: int) -> list[int]:
    return list(
        UsageReport.objects.filter(status=UsageReport.Status.PENDING)
        .exclude(next_attempt_at__gt=now)
        .order_by("created_at", "pk")
        .values_list("pk", flat=True)[:limit]
    )


def usage_reports_send(*, now: datetime | None = None, limit: int | None = None) -> SendResult:
    """Sends the reports due, oldest first, at most `limit` (STRIPE_USAGE_BATCH_SIZE)."""
    result = SendResult()
    if not stripe_adapter.configured():
        result.skipped = "Stripe is not configured"
        return result
    now = now or timezone.now()
    customers: dict[int, str] = {}
    failures_in_a_row = 0
    for report_id in _due(now, limit or int(settings.STRIPE_USAGE_BATCH_SIZE)):
        with transaction.atomic():
            # Locked while it is sent: a second sender skips it rather than sending it too.
            report = (
                UsageReport.objects.select_for_update(skip_locked=True)
                .filter(pk=report_id, status=UsageReport.Status.PENDING)
                .first()
            )
            if report is None:
                continue
            if report.organization_id not in customers:
                customers[report.organization_id] = str(
                    BillingAccount.objects.filter(organization_id=report.organization_id)
                    .values_list("stripe_customer_id", flat=True)
                    .first()
                    or ""
                )
            outcome = _send_one(report, customers[report.organization_id], now)
            report.save()
        if outcome == "sent":
            result.sent += 1
            failures_in_a_row = 0
        elif outcome == "retrying":
            result.retrying += 1
            result.errors.append(report.last_error)
            failures_in_a_row += 1
            if failures_in_a_row >= CONSECUTIVE_FAILURES_TO_STOP:
                break
        else:
            result.failed += 1
            result.errors.append(report.last_error)
    return result


def _send_one(report: UsageReport, customer_id: str, now: datetime) -> str:
    report.attempts += 1
    if not customer_id:
        report.status = UsageReport.Status.FAILED
        report.last_error = "The organization has no Stripe customer."
        return "failed"
    hour = datetime.fromisoformat(str(report.covers["hour"]))
    try:
        stripe_adapter.meter_event_create(
            event_name=report.event_name,
            customer_id=customer_id,
            value=format(report.quantity.normalize(), "f"),
            identifier=report.idempotency_key,
            timestamp=int(hour.timestamp()),
        )
    except stripe_adapter.StripeUnavailable as exc:
        report.next_attempt_at = now + _backoff(report.attempts)
        report.last_error = exc.message
        logger.warning("usage report %s not sent (attempt %s): %s", report.pk, report.attempts, exc.message)
        return "retrying"
    except stripe_adapter.StripeRefused as exc:
        if not exc.duplicate:
            report.status = UsageReport.Status.FAILED
            report.last_error = exc.message
            logger.error("usage report %s refused by Stripe: %s", report.pk, exc.message)
            return "failed"
        report.last_error = "Stripe had it already (an earlier attempt's answer was lost)."
    report.status = UsageReport.Status.SENT
    report.sent_at = now
    report.next_attempt_at = None
    return "sent"


def usage_reports_retry(*, organization_id: int | None = None) -> int:
    """Puts failed reports back in line (after the meter or customer was fixed)."""
    failed = UsageReport.objects.filter(status=UsageReport.Status.FAILED)
    if organization_id is not None:
        failed = failed.filter(organization_id=organization_id)
    return failed.update(status=UsageReport.Status.PENDING, next_attempt_at=None)


def usage_report_run(*, now: datetime | None = None) -> dict[str, Any]:
    """The beat's run: prepare, send, and re-enqueue webhook events whose task was lost."""
    from apps.billing.webhooks import stripe_events_pending

    prepared = usage_reports_prepare(now=now)
    sent = usage_reports_send(now=now)
    return {"prepared": prepared, **sent.as_dict(), "events_requeued": stripe_events_pending(now=now)}
