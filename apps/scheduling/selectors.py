"""Reads of the agent pool: queue positions and how full the pool is."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from django.db import connection
from django.db.models import Case, Count, F, IntegerField, QuerySet, Value, When, Window
from django.db.models.functions import RowNumber
from django_tenants.utils import get_public_schema_name

from apps.scheduling.fairness import LANES, Waiter, fair_order
from apps.scheduling.limits import organization_run_limit, pool_size
from apps.scheduling.models import OrganizationTurn, RunTicket
from apps.tenancy.db import tenant_connection
from apps.tenancy.models import Organization


def visible_tickets() -> QuerySet[RunTicket]:
    """Every ticket from the public schema; in an organization's schema, only its own, so a
    tenant's code can never read or release another organization's runs by id."""
    schema_name = tenant_connection().schema_name
    tickets = RunTicket.objects.all()
    if schema_name != get_public_schema_name():
        tickets = tickets.filter(schema_name=schema_name)
    return tickets


def runs_in_flight() -> dict[int, int]:
    """Organization id -> its runs holding a slot."""
    rows = (
        RunTicket.objects.filter(started_at__isnull=False)
        .values_list("organization_id")
        .annotate(count=Count("id"))
        .order_by()
    )
    return dict(rows)


def last_served(organization_ids: Iterable[int]) -> dict[int, int]:
    """Organization id -> the dispatch number of its latest run given a slot."""
    turns = OrganizationTurn.objects.filter(organization_id__in=set(organization_ids))
    return dict(turns.values_list("organization_id", "last_dispatch_number"))


def organization_limits(organization_ids: Iterable[int]) -> dict[int, int]:
    organizations = Organization.objects.filter(pk__in=set(organization_ids))
    return {organization.pk: organization_run_limit(organization) for organization in organizations}


def waiters_of(tickets: QuerySet[RunTicket]) -> list[Waiter]:
    rows = tickets.values_list("pk", "run_id", "organization_id", "priority", "enqueued_at", "schema_name")
    return [Waiter(*row) for row in rows]


def waiting_tickets() -> QuerySet[RunTicket]:
    """Tickets that may be dispatched: waiting, of an active organization (a suspended one's
    runs keep their tickets and wait)."""
    return RunTicket.objects.filter(started_at__isnull=True, organization__status=Organization.Status.ACTIVE)


def _lane() -> Case:
    return Case(
        *(When(priority=name, then=Value(index)) for index, name in enumerate(LANES)),
        output_field=IntegerField(),
    )


def heads_of_lines(count: int) -> QuerySet[RunTicket]:
    """Each organization's first `count` waiting tickets in its own order (lane, then age)."""
    return (
        waiting_tickets()
        .annotate(
            place=Window(
                RowNumber(),
                partition_by=[F("organization_id")],
                order_by=[_lane(), F("enqueued_at"), F("pk")],
            )
        )
        .filter(place__lte=count)
    )


def _places_in_own_lines(run_ids: set[uuid.UUID], organization_ids: set[int]) -> dict[uuid.UUID, int]:
    """Run id -> how many of its organization's waiting runs come before it in that
    organization's own line (lane, then age): numbered in PostgreSQL, only these returned."""
    lane = " ".join(f"WHEN '{name}' THEN {index}" for index, name in enumerate(LANES))
    query = f"""
        SELECT run_id, place FROM (
            SELECT run_id, row_number() OVER (
                PARTITION BY organization_id ORDER BY CASE priority {lane} END, enqueued_at, id
            ) AS place
            FROM {RunTicket._meta.db_table}
            WHERE started_at IS NULL AND organization_id = ANY(%s)
        ) AS line
        WHERE run_id = ANY(%s)
    """  # noqa: S608 (our own table and lane names; the values are parameters)
    with connection.cursor() as cursor:
        cursor.execute(query, [list(organization_ids), list(run_ids)])
        return {run_id: place - 1 for run_id, place in cursor.fetchall()}


def queue_positions(*, run_ids: Iterable[uuid.UUID | str]) -> dict[uuid.UUID, int]:
    """Run id -> its place in the line (1: the next to start when a slot frees), for those of
    the runs that are waiting and visible here. The order is the dispatcher's own rule
    (apps/scheduling/fairness.py) applied to everything waiting now; a run of an
    organization at its limit is placed after the others, as it starts only when one of its
    organization's runs ends.

    Only the part of the line that can come before the runs asked about is read: an
    organization goes ahead of a run only while it has no more runs in flight (counting
    those it is given) than the run's own organization, so it places at most
    max(limit, in flight + the run's place in its own line + 1) of its runs of the same or
    a later lane before it, after all its runs of earlier lanes."""
    asked = [run_uuid for run_uuid in map(_uuid, run_ids) if run_uuid is not None]
    targets = list(
        visible_tickets()
        .filter(run_id__in=asked, started_at__isnull=True, organization__status=Organization.Status.ACTIVE)
        .values_list("run_id", "organization_id", "priority")
    )
    if not targets:
        return {}
    wanted = {run_id for run_id, _, _ in targets}
    own_places = _places_in_own_lines(wanted, {organization_id for _, organization_id, _ in targets})
    in_flight = runs_in_flight()
    waiting_organizations = set(waiting_tickets().values_list("organization_id", flat=True).distinct())
    limits = organization_limits(waiting_organizations)
    latest_lane = max(LANES.index(priority) for _, _, priority in targets)
    earlier_lanes = Counter(
        waiting_tickets().filter(priority__in=LANES[:latest_lane]).values_list("organization_id", flat=True)
    )
    reach = (
        max(
            max(limits.values(), default=0),
            max(in_flight.values(), default=0) + max(own_places.values(), default=0) + 1,
        )
        + max(earlier_lanes.values(), default=0)
        + 1
    )
    waiters = waiters_of(heads_of_lines(reach))
    organization_ids = {waiter.organization_id for waiter in waiters}
    order = fair_order(
        waiters,
        in_flight=in_flight,
        last_served=last_served(organization_ids),
        limits=limits,
        then_over_limit=True,
    )
    positions: dict[uuid.UUID, int] = {}
    for position, waiter in enumerate(order, start=1):
        if waiter.run_id in wanted:
            positions[waiter.run_id] = position
            if len(positions) == len(wanted):
                break
    return positions


def queue_position(*, run_id: uuid.UUID | str) -> int | None:
    """The run's place in the line (1: next), or None when it is not waiting (running, done,
    never submitted, or another organization's)."""
    run_uuid = _uuid(run_id)
    if run_uuid is None:
        return None
    return queue_positions(run_ids=[run_uuid]).get(run_uuid)


@dataclass(frozen=True)
class PoolStatus:
    size: int
    in_flight: int
    waiting: int


@dataclass(frozen=True)
class OrganizationPoolStatus:
    limit: int
    in_flight: int
    waiting: int


def pool_status() -> PoolStatus:
    in_flight = RunTicket.objects.filter(started_at__isnull=False).count()
    waiting = RunTicket.objects.filter(started_at__isnull=True).count()
    return PoolStatus(size=pool_size(), in_flight=in_flight, waiting=waiting)


def organization_pool_status(*, organization: Organization) -> OrganizationPoolStatus:
    tickets = RunTicket.objects.filter(organization=organization)
    return OrganizationPoolStatus(
        limit=organization_run_limit(organization),
        in_flight=tickets.filter(started_at__isnull=False).count(),
        waiting=tickets.filter(started_at__isnull=True).count(),
    )


def _uuid(value: uuid.UUID | str) -> uuid.UUID | None:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None
