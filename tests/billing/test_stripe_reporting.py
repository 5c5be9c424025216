"""Usage reaches Stripe's Billing Meters exactly once: reports of finished hours are sent
as meter events, Stripe failing only delays them, and nothing is ever counted twice.

Stripe is the fake (tests/fakes/stripe_server.py) with its real meters; the clock the
reporter runs on is passed in (`now`), so "an hour of failures" takes no hour."""

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.test import override_settings

from apps.billing.ledger import usage_record
from apps.billing.models import UsageKind, UsageReport
from apps.billing.reporting import (
    event_name_for,
    usage_report_run,
    usage_reports_prepare,
    usage_reports_retry,
    usage_reports_send,
)
from apps.billing.subscriptions import customer_for
from apps.billing.tasks_stripe import stripe_usage_report_task
from apps.tenancy.models import Organization
from tests.billing.stripe_helpers import catalogue_prices, fake, payer  # noqa: F401 (fixtures)
from tests.fakes.stripe_server import FakeStripe, stripe_fake  # noqa: F401 (a fixture)

pytestmark = pytest.mark.django_db


def hours_ago(hours: int) -> datetime:
    return datetime.now(tz=UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours)


def use(organization: Organization, kind: str, quantity: str, at: datetime, source: str = "1") -> None:
    usage_record(
        organization_id=organization.pk,
        kind=kind,
        quantity=Decimal(quantity),
        source_type="workspace",
        source_id=source,
        idempotency_key=f"test:{organization.pk}:{kind}:{at.isoformat()}:{source}",
        occurred_at=at,
    )


def received(fake: FakeStripe, customer: str) -> dict[str, Decimal]:  # noqa: F811
    """What Stripe's meters hold for the customer, by event name."""
    return {name: total for (who, name), total in fake.meter_totals().items() if who == customer}


def identifiers(fake: FakeStripe, customer: str) -> list[str]:  # noqa: F811
    return [e["identifier"] for e in fake.meter_events if e["payload"]["stripe_customer_id"] == customer]


@pytest.fixture
def metered(fake: FakeStripe, payer: Organization) -> str:  # noqa: F811
    """The payer as a Stripe customer, with the meters of every usage kind in Stripe."""
    catalogue_prices(fake)
    return customer_for(organization=payer)


def test_an_hour_of_stripe_failures_delays_usage_but_loses_and_doubles_none(
    fake: FakeStripe,  # noqa: F811
    payer: Organization,  # noqa: F811
    metered: str,
) -> None:
    start = hours_ago(6)
    expected: dict[str, Decimal] = defaultdict(Decimal)
    for hour in range(3):
        at = start + timedelta(hours=hour, minutes=20)
        for kind, quantity in (
            (UsageKind.LLM_INPUT_TOKENS, f"{1000 + hour}"),
            (UsageKind.SANDBOX_SECONDS, "1800"),
            (UsageKind.STORAGE_GB_HOURS, "0.123456"),
        ):
            use(payer, kind, quantity, at, source="1")
            use(payer, kind, quantity, at, source="2")  # two sources: one report per hour and kind
            expected[event_name_for(kind)] += 2 * Decimal(quantity)
    # Stripe first records one event but its answer is lost, then fails everything.
    fake.fail("/v1/billing/meter_events", times=1, after_processing=True)
    fake.fail("/v1/billing/meter_events")
    clock = start + timedelta(hours=3, minutes=15)
    outage_end = clock + timedelta(hours=1)
    runs = 0
    while clock <= outage_end:
        result = usage_report_run(now=clock)
        assert result["sent"] == 0
        runs += 1
        if clock == start + timedelta(hours=4, minutes=15) - timedelta(minutes=30):
            # Usage keeps being written during the outage (an hour that ends during it).
            use(payer, UsageKind.LLM_OUTPUT_TOKENS, "77", start + timedelta(hours=3, minutes=5))
            expected[event_name_for(UsageKind.LLM_OUTPUT_TOKENS)] += Decimal(77)
        clock += timedelta(minutes=5)
    reports = list(UsageReport.objects.filter(organization=payer))
    assert len(reports) == 10  # 3 hours x 3 kinds, and the hour written during the outage
    assert all(report.status == UsageReport.Status.PENDING for report in reports)
    # Backed off: fewer attempts than runs, the next one further away than the last run.
    assert max(report.attempts for report in reports) < runs
    assert all(
        report.next_attempt_at and report.next_attempt_at > clock - timedelta(minutes=5)
        for report in reports
        if report.attempts
    )
    assert all("Stripe failed" in report.last_error for report in reports if report.attempts)

    fake.clear_failures()
    usage_report_run(now=outage_end + timedelta(hours=1))
    usage_report_run(now=outage_end + timedelta(hours=1, minutes=5))  # nothing left, nothing again
    assert set(UsageReport.objects.filter(organization=payer).values_list("status", flat=True)) == {"sent"}
    assert received(fake, metered) == expected
    sent = identifiers(fake, metered)
    assert len(sent) == len(set(sent)) == 10


def test_late_usage_for_a_reported_hour_is_sent_as_the_difference(
    fake: FakeStripe,  # noqa: F811
    payer: Organization,  # noqa: F811
    metered: str,
) -> None:
    hour = hours_ago(3)
    use(payer, UsageKind.SANDBOX_SECONDS, "600", hour + timedelta(minutes=1), source="1")
    usage_report_run(now=hour + timedelta(hours=1, minutes=15))
    use(payer, UsageKind.SANDBOX_SECONDS, "45", hour + timedelta(minutes=50), source="2")  # written late
    usage_report_run(now=hour + timedelta(hours=1, minutes=20))
    usage_report_run(now=hour + timedelta(hours=1, minutes=25))
    keys = sorted(UsageReport.objects.filter(organization=payer).values_list("idempotency_key", "quantity"))
    assert [quantity for _, quantity in keys] == [Decimal(600), Decimal(45)]
    assert [key.rsplit(":", 1)[1] for key, _ in keys] == ["0", "1"]
    assert received(fake, metered) == {event_name_for(UsageKind.SANDBOX_SECONDS): Decimal(645)}


def test_an_hour_still_running_is_not_reported_yet(
    fake: FakeStripe,  # noqa: F811
    payer: Organization,  # noqa: F811
    metered: str,
) -> None:
    hour = hours_ago(2)
    use(payer, UsageKind.LLM_INPUT_TOKENS, "10", hour + timedelta(minutes=30))
    assert usage_reports_prepare(now=hour + timedelta(minutes=59)) == 0
    assert usage_reports_prepare(now=hour + timedelta(hours=1, minutes=5)) == 0  # within the grace
    assert usage_reports_prepare(now=hour + timedelta(hours=1, minutes=15)) == 1
    assert usage_reports_prepare(now=hour + timedelta(hours=1, minutes=20)) == 0  # made once


def test_a_refused_report_waits_for_a_person_and_goes_out_once_fixed(
    fake: FakeStripe,  # noqa: F811
    payer: Organization,  # noqa: F811
    metered: str,
) -> None:
    hour = hours_ago(3)
    use(payer, UsageKind.LLM_CACHED_TOKENS, "500", hour + timedelta(minutes=5))
    now = hour + timedelta(hours=1, minutes=15)
    with override_settings(STRIPE_METER_EVENT_PREFIX="unconfigured_"):
        usage_reports_prepare(now=now)
        result = usage_reports_send(now=now)
    report = UsageReport.objects.get(organization=payer)
    assert (result.failed, report.status) == (1, UsageReport.Status.FAILED)
    assert "No active meter found for event_name `unconfigured_llm_cached_tokens`" in report.last_error
    assert usage_reports_send(now=now + timedelta(hours=2)).sent == 0  # not retried on its own
    # The operator creates the missing meter and puts the report back in line.
    fake.handle_api(
        "POST",
        "/v1/billing/meters",
        {
            "display_name": "cached",
            "event_name": "unconfigured_llm_cached_tokens",
            "default_aggregation": {"formula": "sum"},
        },
        {"authorization": "Bearer sk_test_fake"},
    )
    assert usage_reports_retry(organization_id=payer.pk) == 1
    assert usage_reports_send(now=now + timedelta(hours=2)).sent == 1
    assert received(fake, metered) == {"unconfigured_llm_cached_tokens": Decimal(500)}


def test_an_organization_without_a_stripe_customer_is_not_reported(
    fake: FakeStripe,  # noqa: F811
    payer: Organization,  # noqa: F811
) -> None:
    hour = hours_ago(3)
    use(payer, UsageKind.LLM_INPUT_TOKENS, "10", hour + timedelta(minutes=5))
    assert usage_reports_prepare(now=hour + timedelta(hours=1, minutes=15)) == 0


def test_without_stripe_configured_reports_wait(
    fake: FakeStripe,  # noqa: F811
    payer: Organization,  # noqa: F811
    metered: str,
) -> None:
    hour = hours_ago(3)
    use(payer, UsageKind.LLM_INPUT_TOKENS, "10", hour + timedelta(minutes=5))
    with override_settings(STRIPE_API_KEY=""):
        result = usage_report_run(now=hour + timedelta(hours=1, minutes=15))
    assert (result["prepared"], result["sent"], result["skipped"]) == (1, 0, "Stripe is not configured")
    assert UsageReport.objects.get(organization=payer).status == UsageReport.Status.PENDING


def test_the_beat_task_reports_through_celery(
    fake: FakeStripe,  # noqa: F811
    payer: Organization,  # noqa: F811
    metered: str,
) -> None:
    hour = hours_ago(2)
    use(payer, UsageKind.LLM_INPUT_TOKENS, "321", hour + timedelta(minutes=5))
    outcome = stripe_usage_report_task.apply().get()
    assert outcome["sent"] >= 1
    assert received(fake, metered) == {event_name_for(UsageKind.LLM_INPUT_TOKENS): Decimal(321)}
