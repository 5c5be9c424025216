"""The beat's safety net (scheduling.dispatch -> pool_reconcile): what a crash or a missed
release leaves behind is repaired, and the freed slots go to waiting runs."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from django_tenants.utils import schema_context

from apps.agents.models import AgentRun
from apps.scheduling import services
from apps.scheduling.models import RunTicket
from apps.scheduling.services import pool_reconcile
from apps.tenancy.models import Organization
from tests.conftest import World
from tests.scheduling.conftest import Pool, make_runs

pytestmark = pytest.mark.django_db


def _set_state(organization: Organization, run_id: uuid.UUID, state: str) -> None:
    with schema_context(organization.schema_name):
        AgentRun.objects.filter(pk=run_id).update(state=state)


def test_slots_of_finished_or_deleted_runs_are_freed_for_waiting_runs(world: World, pool: Pool) -> None:
    finished, deleted, running = make_runs(world.alpha, 3)
    waiting = make_runs(world.beta, 2)
    pool.submit(world.alpha, [finished, deleted, running])
    pool.submit(world.beta, waiting)
    _set_state(world.alpha, finished, AgentRun.State.SUCCEEDED)  # its release never came
    with schema_context(world.alpha.schema_name):
        AgentRun.objects.filter(pk=deleted).delete()

    result = pool_reconcile()

    assert set(result.dropped) == {finished, deleted}
    assert result.dispatched == waiting
    assert pool.started_ids() == {running, *waiting}
    assert pool_reconcile().dropped == []  # twice: nothing more to do


def test_a_paused_runs_slot_is_freed_only_after_the_grace_period(
    world: World, pool: Pool, settings: Any
) -> None:
    settings.AGENTS_POOL_SIZE = 1
    paused, waiting = make_runs(world.alpha, 2)
    pool.submit(world.alpha, [paused, waiting])
    _set_state(world.alpha, paused, AgentRun.State.PAUSED)

    assert pool_reconcile().released == []  # its release may be on its way
    RunTicket.objects.filter(run_id=paused).update(
        handed_off_at=timezone.now() - timedelta(seconds=settings.AGENTS_POOL_HANDOFF_RETRY_SECONDS + 1)
    )
    result = pool_reconcile()

    assert result.released == [paused]
    assert pool.started_ids() == {waiting}


def test_a_slot_claimed_by_a_dispatcher_that_died_before_starting_the_run_is_handed_off(
    world: World, pool: Pool, settings: Any
) -> None:
    settings.AGENTS_POOL_SIZE = 0
    (run_id,) = make_runs(world.alpha, 1)
    pool.submit(world.alpha, [run_id])
    # What the claim's commit leaves when the process dies before run_start_dispatched.
    claimed_at = timezone.now() - timedelta(seconds=settings.AGENTS_POOL_HANDOFF_RETRY_SECONDS + 1)
    RunTicket.objects.filter(run_id=run_id).update(started_at=claimed_at, dispatch_number=1)
    settings.AGENTS_POOL_SIZE = 1

    result = pool_reconcile()

    assert result.handed_off == [run_id]
    with schema_context(world.alpha.schema_name):
        assert AgentRun.objects.get(pk=run_id).state == AgentRun.State.RUNNING
    assert RunTicket.objects.get(run_id=run_id).handed_off_at is not None


def test_a_queued_run_whose_submission_was_lost_goes_back_in_line_at_its_place(
    world: World, pool: Pool, settings: Any
) -> None:
    settings.AGENTS_POOL_SIZE = 1
    running = make_runs(world.alpha, 1)
    pool.submit(world.alpha, running)
    lost = make_runs(world.alpha, 1)  # committed, but its process died before submitting it
    later = make_runs(world.alpha, 1)
    pool.submit(world.alpha, later)

    result = pool_reconcile()

    assert result.resubmitted == lost
    assert services.queue_positions(run_ids=lost + later) == {lost[0]: 1, later[0]: 2}
    assert pool_reconcile().resubmitted == []
    pool.release(running[0])
    assert pool.started_ids() == set(lost)
