"""Dispatchers in several processes at once (web requests, workers, beat) never over-fill
the pool: threads here, each with its own PostgreSQL connection, on committed data."""

from __future__ import annotations

import functools
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connection
from django.db.models import Count
from django_tenants.utils import schema_context

from apps.agents.models import AgentRun
from apps.scheduling import services
from apps.scheduling.models import OrganizationTurn, RunTicket
from apps.scheduling.selectors import runs_in_flight
from tests.conftest import World
from tests.scheduling.conftest import make_runs

POOL_SIZE = 5
ORGANIZATION_LIMIT = 3


@pytest.fixture
def queued_runs(live_db: World, settings: Any, idle_steps: None) -> Iterator[dict[str, list[uuid.UUID]]]:
    """Ten committed runs of Alpha and ten of Beta, in line while the pool has no slot."""
    settings.AGENTS_POOL_SIZE = 0
    settings.AGENTS_ORG_CONCURRENCY = ORGANIZATION_LIMIT
    runs = {"alpha": make_runs(live_db.alpha, 10), "beta": make_runs(live_db.beta, 10)}
    try:
        for name, organization in (("alpha", live_db.alpha), ("beta", live_db.beta)):
            for run_id in runs[name]:
                services.pool_submit(organization=organization, run_id=run_id)
        settings.AGENTS_POOL_SIZE = POOL_SIZE
        yield runs
    finally:
        RunTicket.objects.filter(run_id__in=[*runs["alpha"], *runs["beta"]]).delete()
        OrganizationTurn.objects.filter(organization__in=[live_db.alpha, live_db.beta]).delete()
        for name, organization in (("alpha", live_db.alpha), ("beta", live_db.beta)):
            with schema_context(organization.schema_name):
                AgentRun.objects.filter(pk__in=runs[name]).delete()


def _all_at_once(calls: list[Callable[[], object]]) -> None:
    barrier = threading.Barrier(len(calls))
    errors: list[BaseException] = []

    def run(call: Callable[[], object]) -> None:
        try:
            barrier.wait()
            call()
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors


def _assert_full_and_within_limits(live_db: World) -> None:
    """As many in flight as the pool and the organizations' limits allow: no more, no less."""
    in_flight = runs_in_flight()
    left = RunTicket.objects.all().values_list("organization_id").annotate(count=Count("id")).order_by()
    allowed = sum(min(ORGANIZATION_LIMIT, count) for _, count in left)
    assert sum(in_flight.values()) == min(POOL_SIZE, allowed)
    assert in_flight.get(live_db.alpha.pk, 0) <= ORGANIZATION_LIMIT
    assert in_flight.get(live_db.beta.pk, 0) <= ORGANIZATION_LIMIT


def test_eight_dispatchers_at_once_fill_the_pool_exactly_once(
    live_db: World, queued_runs: dict[str, list[uuid.UUID]]
) -> None:
    _all_at_once([services.pool_dispatch] * 8)

    _assert_full_and_within_limits(live_db)
    started = RunTicket.objects.filter(started_at__isnull=False)
    for ticket in started:
        with schema_context(ticket.schema_name):
            assert AgentRun.objects.get(pk=ticket.run_id).state == AgentRun.State.RUNNING
    # Every run dispatched once: one "running" state event each, not one per dispatcher.
    for ticket in started:
        with schema_context(ticket.schema_name):
            events = AgentRun.objects.get(pk=ticket.run_id).events.filter(kind="state")
            assert [event.payload["state"] for event in events].count("running") == 1


def test_releases_and_dispatches_racing_keep_the_pool_full_and_never_over_it(
    live_db: World, queued_runs: dict[str, list[uuid.UUID]]
) -> None:
    services.pool_dispatch()
    rounds = 0
    while RunTicket.objects.exists():
        rounds += 1
        started = list(RunTicket.objects.filter(started_at__isnull=False).values_list("run_id", flat=True))
        releases = [functools.partial(services.pool_release, run_id=run_id) for run_id in started]
        _all_at_once([*releases, services.pool_dispatch, services.pool_dispatch, services.pool_dispatch])
        _assert_full_and_within_limits(live_db)
    assert rounds >= 4
