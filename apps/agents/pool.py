"""The agent pool as the run engine sees it: the scheduler's interface (apps/scheduling).

A run asks for a slot when it is created, resumed or approved (`submit`), and gives it
back when it stops running: finished, paused or waiting for a member (`release`). The
scheduler starts a run by calling apps.agents.tasks.run_start_dispatched in the run's
schema when a slot is free for it.

Without the scheduler installed, every run starts at once (no caps, no fairness).
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import connection, transaction

from apps.agents.models import AgentRun
from apps.tenancy.models import Organization

logger = logging.getLogger(__name__)


def _scheduler() -> Any:
    try:
        from apps.scheduling import services
    except ImportError:
        return None
    return services if hasattr(services, "pool_submit") else None


def submit(*, organization: Organization, run: AgentRun) -> None:
    """Ask for a slot for the run (call after the transaction that queued it commits)."""
    scheduler = _scheduler()
    if scheduler is None:
        from apps.agents.tasks import run_start_dispatched

        run_start_dispatched(organization.schema_name, str(run.pk))
        return
    scheduler.pool_submit(organization=organization, run_id=run.pk, priority=run.priority)


def release(*, run_id: object) -> None:
    """The run holds no slot any more (finished, paused, waiting); the next one may start."""
    scheduler = _scheduler()
    if scheduler is None:
        return
    try:
        # A savepoint: a failed release must not break the caller's transaction.
        with transaction.atomic():
            scheduler.pool_release(run_id=run_id)
    except Exception:  # a run that ended must not fail because the pool hiccuped
        logger.exception("Could not release the pool slot of run %s", run_id)


def position(*, run_id: object) -> int | None:
    """Where a queued run stands in the pool's queue (1: next), or None."""
    scheduler = _scheduler()
    if scheduler is None or not hasattr(scheduler, "queue_position"):
        return None
    result = scheduler.queue_position(run_id=run_id)
    return int(result) if result is not None else None


def current_schema() -> str:
    return str(getattr(connection, "schema_name", "public"))
