"""The agent pool's safety net on Celery beat (CELERY_BEAT_SCHEDULE "scheduling-dispatch")."""

from celery import shared_task

from apps.scheduling.services import pool_reconcile


@shared_task(name="scheduling.dispatch")
def pool_reconcile_task() -> dict[str, list[str]]:
    """Repair what a crash left (stale tickets, slots never handed off), then fill free slots.
    Safe to run twice and beside the dispatchers that submit and release call."""
    return pool_reconcile().as_dict()
