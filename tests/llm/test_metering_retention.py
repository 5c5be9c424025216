"""Hourly roll-ups are pruned after the retention period; daily ones stay."""

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.llm.models import UsageDaily, UsageHourly
from apps.llm.tasks import usage_prune_task

pytestmark = pytest.mark.django_db


def test_old_hourly_rows_are_pruned_and_daily_rows_kept(world, settings):
    settings.LLM_USAGE_HOURLY_RETENTION_DAYS = 14
    now = timezone.now().replace(minute=0, second=0, microsecond=0)
    for age in (1, 20):
        hour = now - timedelta(days=age)
        UsageHourly.objects.create(
            organization=world.alpha, hour=hour, model="gpt-4o-mini", provider="openai"
        )
        UsageDaily.objects.create(
            organization=world.alpha, day=hour.date(), model="gpt-4o-mini", provider="openai"
        )
    assert usage_prune_task() == 1
    assert usage_prune_task() == 0  # safe to run twice
    assert [row.hour for row in UsageHourly.objects.filter(organization=world.alpha)] == [
        now - timedelta(days=1)
    ]
    assert UsageDaily.objects.filter(organization=world.alpha).count() == 2
