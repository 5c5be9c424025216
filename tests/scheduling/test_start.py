"""Dispatch starts runs for real, through the run engine (apps.agents.tasks
.run_start_dispatched), in their own organization's schema only."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django_tenants.utils import schema_context

from apps.agents.models import AgentRun, Event
from apps.scheduling.models import RunTicket
from apps.tenancy.models import Organization
from tests.conftest import World
from tests.scheduling.conftest import Pool, make_runs

pytestmark = pytest.mark.django_db


def _state(organization: Organization, run_id: uuid.UUID) -> str:
    with schema_context(organization.schema_name):
        return AgentRun.objects.get(pk=run_id).state


def test_a_run_given_a_slot_starts_running_in_its_own_schema_and_the_others_wait_queued(
    world: World, pool: Pool
) -> None:
    alpha_runs = make_runs(world.alpha, 2)
    beta_runs = make_runs(world.beta, 2)

    pool.submit(world.alpha, alpha_runs)
    pool.submit(world.beta, beta_runs)

    assert [_state(world.alpha, run_id) for run_id in alpha_runs] == ["running", "running"]
    assert [_state(world.beta, run_id) for run_id in beta_runs] == ["running", "queued"]
    with schema_context(world.alpha.schema_name):
        started = Event.objects.filter(run_id=alpha_runs[0], kind=Event.Kind.STATE).last()
        assert started is not None
        assert started.payload["state"] == "running"
        # Beta's run ids mean nothing in Alpha's schema: nothing of Beta's was started here.
        assert not AgentRun.objects.filter(pk__in=beta_runs).exists()
    assert all(ticket.handed_off_at is not None for ticket in pool.started())


def test_a_run_cancelled_while_waiting_gives_its_slot_to_the_next_one(
    world: World, pool: Pool, settings
) -> None:
    settings.AGENTS_POOL_SIZE = 1
    running, cancelled, next_run = make_runs(world.alpha, 3)
    pool.submit(world.alpha, [running, cancelled, next_run])
    with schema_context(world.alpha.schema_name):
        AgentRun.objects.filter(pk=cancelled).update(state=AgentRun.State.CANCELLED)

    pool.release(running)

    assert _state(world.alpha, next_run) == "running"
    assert _state(world.alpha, cancelled) == "cancelled"
    assert not RunTicket.objects.filter(run_id=cancelled).exists()


def _places_told(organization: Organization, run_id: uuid.UUID) -> list[int]:
    with schema_context(organization.schema_name):
        payloads = Event.objects.filter(run_id=run_id, kind=Event.Kind.STATE).order_by("seq")
        return [
            p["queue_position"] for p in payloads.values_list("payload", flat=True) if "queue_position" in p
        ]


def test_runs_near_the_front_of_the_line_are_told_their_place_each_time_it_changes(
    world: World, pool: Pool, settings: Any
) -> None:
    settings.AGENTS_POOL_SIZE = 1
    settings.AGENTS_POOL_ANNOUNCE_POSITIONS = 2
    running, second, third, fourth = make_runs(world.alpha, 4)
    pool.submit(world.alpha, [running, second, third, fourth])
    assert _places_told(world.alpha, fourth) == []  # third in line: not told, too far back

    pool.release(running)
    assert _places_told(world.alpha, fourth) == [2]
    pool.release(second)

    assert _places_told(world.alpha, running) == []  # it never waited
    assert _places_told(world.alpha, second) == [1]
    assert _places_told(world.alpha, third) == [2, 1]
    assert _places_told(world.alpha, fourth) == [2, 1]
    with schema_context(world.alpha.schema_name):
        told = Event.objects.filter(run_id=third, kind=Event.Kind.STATE).order_by("seq").first()
        assert told is not None
        assert told.payload["state"] == "queued"
