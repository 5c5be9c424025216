"""Runs on Celery: thin tasks over apps/agents/loop.py. Each is safe to run twice.

- agents.step(run_id, number): one step of a run, in the run's schema (the task carries
  the schema it was sent from: tenant_schemas_celery). Late-acknowledged (settings), so
  a worker that dies mid-step leaves it to be delivered again; agents.reap does not wait
  for that.
- agents.reap (beat, every AGENTS_REAP_SECONDS): in every active organization, running
  runs whose heartbeat is older than AGENTS_HEARTBEAT_STALE_SECONDS get their next step
  sent again, so another worker resumes a run whose worker died.
- run_start_dispatched(schema_name, run_id): the pool's call when a slot is free for a
  run: it starts running and its next step is sent.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django_tenants.utils import schema_context

from apps.agents import loop, pool
from apps.agents.events import event_append
from apps.agents.models import AgentRun, Event
from apps.tenancy.models import Organization

logger = logging.getLogger(__name__)


@shared_task(name="agents.step")
def step_task(run_id: str, number: int) -> dict[str, Any]:
    outcome = loop.step_run(run_id=run_id, number=number)
    return {"run": run_id, "step": number, "status": outcome.status, "detail": outcome.detail}


def step_send(run_id: str, number: int) -> None:
    """Send agents.step to AGENTS_STEP_QUEUE (workers of their own), else the default queue."""
    queue = str(settings.AGENTS_STEP_QUEUE or "")
    if queue:
        step_task.apply_async((run_id, number), queue=queue)
    else:
        step_task.apply_async((run_id, number))


@shared_task(name="agents.run_ended")
def run_ended_task(run_id: str) -> bool:
    """The end of a run that no worker was driving (cancelled while queued, paused or
    waiting for approval): its sandbox sessions cleared and its knowledge synced, as the
    loop does for a run that ends in a step. Safe to repeat: both are idempotent."""
    run = AgentRun.objects.filter(pk=run_id).first()
    if run is None or not run.finished:
        return False
    organization = Organization.objects.get(schema_name=pool.current_schema())
    loop.run_end_hook(organization=organization, run=run)
    return True


@shared_task(name="agents.reap")
def reap_task() -> dict[str, list[str]]:
    revived: dict[str, list[str]] = {}
    organizations = Organization.objects.filter(status=Organization.Status.ACTIVE).order_by("pk")
    for organization in organizations:
        with schema_context(organization.schema_name), transaction.atomic():
            runs = loop.reap()
        if runs:
            logger.warning("Runs of %s resumed after their worker went silent: %s", organization.slug, runs)
            revived[organization.slug] = runs
    return revived


def run_start_dispatched(schema_name: str, run_id: str) -> None:
    """Start the run the pool gave a slot to (in its schema); its next step is sent after
    commit. A run no longer queued (cancelled or paused meanwhile) gives the slot back."""
    with schema_context(schema_name):
        with transaction.atomic():
            run = AgentRun.objects.select_for_update().filter(pk=run_id).first()
            if run is None or run.state not in (AgentRun.State.QUEUED, AgentRun.State.RUNNING):
                give_back = True
            else:
                give_back = False
                if run.state == AgentRun.State.QUEUED:
                    now = timezone.now()
                    reason = "Resumed" if run.started_at else "Started"
                    run.state, run.state_reason = AgentRun.State.RUNNING, reason
                    run.started_at = run.started_at or now
                    run.heartbeat_at = now
                    AgentRun.objects.filter(pk=run.pk).update(
                        state=run.state,
                        state_reason=run.state_reason,
                        started_at=run.started_at,
                        heartbeat_at=now,
                    )
                    event_append(
                        run=run, kind=Event.Kind.STATE, payload={"state": run.state, "reason": reason}
                    )
                number = run.steps + 1
                transaction.on_commit(lambda: step_send(str(run_id), number))
        if give_back:
            pool.release(run_id=run_id)
