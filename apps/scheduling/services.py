"""The agent pool: how many runs are in flight, which waiting run gets the next slot.

The core calls `pool_submit` when a run should run (created, resumed, approved) and
`pool_release` when it stops holding a slot (finished, paused, waiting for approval).
`pool_dispatch` gives free slots to waiting runs by the rule in fairness.py and starts
each through `apps.agents.tasks.run_start_dispatched(schema_name, run_id)`. Submit and
release dispatch after their transaction commits; the beat task `scheduling.dispatch`
does it again as a safety net, after repairing what a crash may have left behind.

Two dispatchers never over-fill the pool: slots are counted and claimed under one
transaction-scoped advisory lock. Claiming is one transaction and starting the runs
comes after it commits, so the lock is never held while a tenant's run is being
started; a ticket claimed but never handed off (the process died between) is handed
off again by the beat task, which run_start_dispatched, like every task, is safe for.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import islice

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from django.utils.module_loading import import_string
from django_tenants.utils import get_public_schema_name, schema_context

from apps.core.errors import Conflict, Forbidden, Invalid, NotFound
from apps.scheduling.fairness import LANES, Waiter, fair_order
from apps.scheduling.limits import pool_size
from apps.scheduling.models import DISPATCH_SEQUENCE, OrganizationTurn, RunTicket
from apps.scheduling.selectors import (
    heads_of_lines,
    last_served,
    organization_limits,
    queue_position,
    queue_positions,
    runs_in_flight,
    visible_tickets,
    waiters_of,
)
from apps.tenancy.db import tenant_connection
from apps.tenancy.models import Organization

__all__ = [
    "pool_dispatch",
    "pool_reconcile",
    "pool_release",
    "pool_submit",
    # Reads, here too: the run engine and the API reach the pool through this one module.
    "queue_position",
    "queue_positions",
]

logger = logging.getLogger(__name__)

# pg_advisory_xact_lock's key for counting and claiming slots (any constant of our own).
DISPATCH_LOCK_KEY = 0x6167_706F_6F6C  # "agpool"
START_RUN = "apps.agents.tasks.run_start_dispatched"


@transaction.atomic
def pool_submit(
    *, organization: Organization, run_id: uuid.UUID | str, priority: str = "interactive"
) -> RunTicket:
    """Put the run in line for a slot (it waits, never fails, when the pool is full).

    Submitting a waiting run again keeps its place (its lane follows `priority`); a run that
    still holds a slot (resumed before its release) is started again in it."""
    if priority not in LANES:
        raise Invalid(f"Unknown priority {priority!r}: use one of {', '.join(LANES)}.", field="priority")
    run_uuid = _run_uuid(run_id)
    current = tenant_connection().schema_name
    if current not in (get_public_schema_name(), organization.schema_name):
        raise Forbidden("A run can only be submitted from its own organization.")
    if not _run_exists(organization.schema_name, run_uuid):
        raise NotFound(f"Organization {organization.slug} has no run {run_uuid}.")
    RunTicket.objects.bulk_create(
        [
            RunTicket(
                organization=organization,
                schema_name=organization.schema_name,
                run_id=run_uuid,
                priority=priority,
            )
        ],
        ignore_conflicts=True,
    )
    ticket = RunTicket.objects.select_for_update().get(run_id=run_uuid)
    if ticket.organization_id != organization.pk:
        raise Conflict(f"Run {run_uuid} is in another organization's line.")
    hand_off_again = []
    if ticket.started_at is not None:
        ticket.handed_off_at = None
        ticket.save(update_fields=["handed_off_at"])
        hand_off_again.append(ticket.pk)
    elif ticket.priority != priority:
        ticket.priority = priority
        ticket.save(update_fields=["priority"])
    transaction.on_commit(lambda: _dispatch(hand_off=hand_off_again), robust=True)
    return ticket


@transaction.atomic
def pool_release(*, run_id: uuid.UUID | str) -> bool:
    """The run no longer needs a slot (or its place in line): free it and, after commit,
    give it to the next waiting run. False when the run had no ticket (released twice)."""
    run_uuid = _run_uuid(run_id)
    ticket = visible_tickets().select_for_update().filter(run_id=run_uuid).first()
    if ticket is None:
        return False
    ticket.delete()
    # A freed slot goes to the next run; a place freed in line moves the runs behind it up.
    transaction.on_commit(_dispatch, robust=True)
    return True


def pool_dispatch() -> list[uuid.UUID]:
    """Give every free slot to a waiting run and start those runs; their ids, in order."""
    return _dispatch()


@dataclass
class ReconcileResult:
    dropped: list[uuid.UUID] = field(default_factory=list)
    released: list[uuid.UUID] = field(default_factory=list)
    resubmitted: list[uuid.UUID] = field(default_factory=list)
    handed_off: list[uuid.UUID] = field(default_factory=list)
    dispatched: list[uuid.UUID] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        return {name: [str(run_id) for run_id in getattr(self, name)] for name in self.__dataclass_fields__}


def pool_reconcile() -> ReconcileResult:
    """The beat's safety net: drop tickets of runs that are gone or finished, free slots of
    runs that stopped (paused, waiting for approval) without releasing them, put back in
    line queued runs without a ticket, hand off again slots claimed but never handed off,
    then dispatch. Safe to run twice, and beside the dispatchers: each repair is a
    conditional write of its own."""
    from apps.agents.models import AgentRun

    result = ReconcileResult()
    grace = timezone.now() - timedelta(seconds=settings.AGENTS_POOL_HANDOFF_RETRY_SECONDS)
    tickets = RunTicket.objects.only("schema_name", "run_id", "started_at", "handed_off_at")
    by_schema: dict[str, list[RunTicket]] = {}
    for ticket in tickets:
        by_schema.setdefault(ticket.schema_name, []).append(ticket)
    stopped = (AgentRun.State.PAUSED, AgentRun.State.WAITING)
    for schema_name, schema_tickets in by_schema.items():
        with schema_context(schema_name):
            run_ids = [ticket.run_id for ticket in schema_tickets]
            states = dict(AgentRun.objects.filter(pk__in=run_ids).values_list("pk", "state"))
        for ticket in schema_tickets:
            state = states.get(ticket.run_id)
            # Each delete names what we read, so a ticket changed meanwhile (dispatched,
            # submitted again) is left to the next round.
            if state is None or state in AgentRun.FINISHED:
                same = RunTicket.objects.filter(pk=ticket.pk, started_at=ticket.started_at)
                if same.delete()[0]:
                    result.dropped.append(ticket.run_id)
            elif state in stopped and ticket.handed_off_at is not None and ticket.handed_off_at < grace:
                same = RunTicket.objects.filter(pk=ticket.pk, handed_off_at=ticket.handed_off_at)
                if same.delete()[0]:
                    result.released.append(ticket.run_id)
    result.resubmitted = _resubmit_lost_runs()
    stale = RunTicket.objects.filter(
        started_at__isnull=False, started_at__lt=grace, handed_off_at__isnull=True
    ).values_list("pk", flat=True)
    result.handed_off = _hand_off(list(stale))
    result.dispatched = _dispatch()
    if result.dropped or result.released or result.resubmitted or result.handed_off:
        logger.info("Agent pool repaired: %s", result.as_dict())
    return result


def _resubmit_lost_runs() -> list[uuid.UUID]:
    """Queued runs with no ticket, in line again at the place their creation gave them.

    A submission is lost when the process that committed a run's creation, resume or
    approval dies before its after-commit submit, or when a release that was late (sent
    after the commit that stopped the run) deletes the ticket of the run's next turn. A run
    submitted meanwhile keeps its own ticket: the insert ignores a run that has one."""
    from apps.agents.models import AgentRun

    lost: list[uuid.UUID] = []
    for organization in Organization.objects.filter(status=Organization.Status.ACTIVE):
        with schema_context(organization.schema_name):
            queued = list(
                AgentRun.objects.filter(state=AgentRun.State.QUEUED).values_list(
                    "pk", "priority", "created_at"
                )
            )
        if not queued:
            continue
        ticketed = set(
            RunTicket.objects.filter(run_id__in=[run_id for run_id, _, _ in queued]).values_list(
                "run_id", flat=True
            )
        )
        missing = [
            RunTicket(
                organization=organization,
                schema_name=organization.schema_name,
                run_id=run_id,
                priority=priority if priority in LANES else LANES[0],
                enqueued_at=created_at,
            )
            for run_id, priority, created_at in queued
            if run_id not in ticketed
        ]
        RunTicket.objects.bulk_create(missing, ignore_conflicts=True)
        lost += [ticket.run_id for ticket in missing]
    return lost


def _dispatch(*, hand_off: Iterable[int] = ()) -> list[uuid.UUID]:
    claimed = _claim_free_slots()
    _hand_off([*hand_off, *(waiter.ticket_id for waiter in claimed)])
    _announce_positions()
    return [waiter.run_id for waiter in claimed]


def _announce_positions() -> None:
    """Tell the watchers of the first AGENTS_POOL_ANNOUNCE_POSITIONS runs in line their new
    place: a state event with queue_position, once per change. Runs further back learn it
    from queue_position (REST, pages) and get events once they come this close, so a change
    costs at most that many events however long the line."""
    limit = int(settings.AGENTS_POOL_ANNOUNCE_POSITIONS)
    if limit <= 0:
        return
    waiters = waiters_of(heads_of_lines(limit))
    if not waiters:
        return
    organization_ids = {waiter.organization_id for waiter in waiters}
    order = fair_order(
        waiters,
        in_flight=runs_in_flight(),
        last_served=last_served(organization_ids),
        limits=organization_limits(organization_ids),
        then_over_limit=True,
    )
    told = dict(
        RunTicket.objects.filter(pk__in=[waiter.ticket_id for waiter in waiters]).values_list(
            "pk", "announced_position"
        )
    )
    for position, waiter in enumerate(islice(order, limit), start=1):
        if told.get(waiter.ticket_id) == position:
            continue
        # The conditional write makes one process, of several announcing at once, tell it.
        changed = (
            RunTicket.objects.filter(pk=waiter.ticket_id, started_at__isnull=True)
            .exclude(announced_position=position)
            .update(announced_position=position)
        )
        if changed:
            _tell_position(waiter, position)


def _tell_position(waiter: Waiter, position: int) -> None:
    from apps.agents.events import event_append
    from apps.agents.models import AgentRun, Event

    try:
        with schema_context(waiter.schema_name), transaction.atomic():
            run = (
                AgentRun.objects.select_for_update()
                .filter(pk=waiter.run_id, state=AgentRun.State.QUEUED)
                .first()
            )
            if run is not None:
                event_append(
                    run=run,
                    kind=Event.Kind.STATE,
                    payload={
                        "state": AgentRun.State.QUEUED,
                        "reason": f"Waiting for a slot in the agent pool (place {position})",
                        "queue_position": position,
                    },
                )
    except Exception:
        # A watcher's hint: never worth failing the dispatch that freed a slot.
        logger.exception("Could not tell run %s its place in line", waiter.run_id)


def _claim_free_slots() -> list[Waiter]:
    """Under the pool's lock: the waiting tickets given a slot, in dispatch order."""
    claimed: list[Waiter] = []
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [DISPATCH_LOCK_KEY])
        # A waiting ticket may be released between our read and our write (a run cancelled
        # while queued); its slot is then offered again in the next round.
        for _round in range(3):
            in_flight = runs_in_flight()
            free = pool_size() - sum(in_flight.values())
            if free <= 0:
                break
            waiters = waiters_of(heads_of_lines(free))
            if not waiters:
                break
            organization_ids = {waiter.organization_id for waiter in waiters}
            order = fair_order(
                waiters,
                in_flight=in_flight,
                last_served=last_served(organization_ids),
                limits=organization_limits(organization_ids),
            )
            chosen = list(islice(order, free))
            if not chosen:
                break
            now = timezone.now()
            lost = False
            for waiter in chosen:
                number = _next_dispatch_number()
                updated = RunTicket.objects.filter(pk=waiter.ticket_id, started_at__isnull=True).update(
                    started_at=now, handed_off_at=None, dispatch_number=number
                )
                if not updated:
                    lost = True
                    continue
                claimed.append(waiter)
                OrganizationTurn.objects.bulk_create(
                    [OrganizationTurn(organization_id=waiter.organization_id, last_dispatch_number=number)],
                    update_conflicts=True,
                    unique_fields=["organization"],
                    update_fields=["last_dispatch_number"],
                )
            if not lost:
                break
    return claimed


def _next_dispatch_number() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT nextval(%s)", [DISPATCH_SEQUENCE])
        return int(cursor.fetchone()[0])


def _hand_off(ticket_ids: list[int]) -> list[uuid.UUID]:
    """Start the runs of these claimed tickets in their own schemas; the run ids handed off.
    A run that fails to start keeps its slot unhanded, for the beat to try again (or to drop
    once the run is gone or finished); it never holds up the others."""
    if not ticket_ids:
        return []
    try:
        start_run = import_string(START_RUN)
    except ImportError:
        logger.warning("Agent runs cannot be started: %s is missing", START_RUN)
        return []
    tickets = RunTicket.objects.filter(pk__in=ticket_ids, started_at__isnull=False).order_by(
        "dispatch_number"
    )
    handed_off = []
    for ticket in tickets:
        try:
            with schema_context(ticket.schema_name), transaction.atomic():
                start_run(ticket.schema_name, str(ticket.run_id))
        except Exception:
            # Any error of one run's start (its data, a broker hiccup) must not stop the pool.
            logger.exception("Starting run %s of %s failed; retried later", ticket.run_id, ticket.schema_name)
            continue
        RunTicket.objects.filter(pk=ticket.pk, started_at=ticket.started_at).update(
            handed_off_at=timezone.now()
        )
        handed_off.append(ticket.run_id)
    return handed_off


def _run_exists(schema_name: str, run_id: uuid.UUID) -> bool:
    from apps.agents.models import AgentRun

    with schema_context(schema_name):
        return AgentRun.objects.filter(pk=run_id).exists()


def _run_uuid(run_id: uuid.UUID | str) -> uuid.UUID:
    if isinstance(run_id, uuid.UUID):
        return run_id
    try:
        return uuid.UUID(str(run_id))
    except ValueError:
        raise Invalid(f"{run_id!r} is not a run id.", field="run_id") from None
