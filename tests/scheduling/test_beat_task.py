"""The beat's task, scheduling.dispatch, run by a real worker: a slot that a dispatcher
claimed and never handed to its run (it died between) is handed off, and the run starts."""

from __future__ import annotations

import subprocess
from datetime import timedelta
from typing import Any

from django.utils import timezone
from django_tenants.utils import schema_context

from apps.agents.models import AgentRun, Event
from apps.scheduling import services
from apps.scheduling.models import RunTicket
from apps.scheduling.tasks import pool_reconcile_task
from tests.conftest import World, wait_for
from tests.scheduling.conftest import forget_runs_knowledge, make_runs


def test_the_worker_hands_off_a_slot_claimed_by_a_dispatcher_that_died(
    live_db: World, celery_worker: subprocess.Popen[bytes], settings: Any
) -> None:
    settings.AGENTS_POOL_SIZE = 0  # here only: it stays in line until we claim it by hand
    (run_id,) = make_runs(live_db.alpha, 1)
    try:
        services.pool_submit(organization=live_db.alpha, run_id=run_id)
        # The worker hands off slots claimed over AGENTS_POOL_HANDOFF_RETRY_SECONDS (60) ago.
        RunTicket.objects.filter(run_id=run_id).update(
            started_at=timezone.now() - timedelta(minutes=5), dispatch_number=1
        )

        result = pool_reconcile_task.delay().get(timeout=30)

        assert str(run_id) in result["handed_off"]
        with schema_context(live_db.alpha.schema_name):
            states = Event.objects.filter(run_id=run_id, kind=Event.Kind.STATE).values_list(
                "payload", flat=True
            )
            assert "running" in [payload["state"] for payload in states]
    finally:
        with schema_context(live_db.alpha.schema_name):
            # Started, it has a step under way in the worker (which ends it: it has no
            # workspace); deleting it meanwhile would race the step's writes.
            wait_for(lambda: AgentRun.objects.get(pk=run_id).state != AgentRun.State.RUNNING, timeout=60)
            services.pool_release(run_id=run_id)
            AgentRun.objects.filter(pk=run_id).delete()
        forget_runs_knowledge(live_db.alpha, [run_id])
