"""Background work of the gateway.

- llm.usage_prune (daily on Celery beat's schedule, CELERY_BEAT_SCHEDULE): deletes
  hourly usage roll-ups older than LLM_USAGE_HOURLY_RETENTION_DAYS (default 14);
  the daily roll-ups stay. Safe to run twice.
- A Celery worker process writes the usage it metered before it exits (prefork
  children leave with os._exit, which skips atexit).
"""

from datetime import timedelta
from typing import Any

from celery import shared_task
from celery.signals import worker_process_shutdown, worker_shutdown
from django.conf import settings
from django.utils import timezone

from apps.llm.metering import meter
from apps.llm.models import UsageHourly


@shared_task(name="llm.usage_prune")
def usage_prune_task() -> int:
    return usage_prune()


def usage_prune() -> int:
    days = int(getattr(settings, "LLM_USAGE_HOURLY_RETENTION_DAYS", 14))
    cutoff = timezone.now() - timedelta(days=days)
    deleted, _ = UsageHourly.objects.filter(hour__lt=cutoff).delete()
    return deleted


@worker_process_shutdown.connect
@worker_shutdown.connect
def _flush_usage(**_: Any) -> None:
    meter().flush()
