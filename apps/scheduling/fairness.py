"""The pool's fairness rule, in one place for dispatching and for queue positions.

When a slot frees, the run chosen is:
  1. of the most urgent lane waiting (interactive before batch), among organizations
     under their own limit;
  2. of the organization with the fewest runs in flight (the runs it was just given
     count), so a tenant with 50 queued runs and one without any in flight are never
     served in submission order: the second one's first run goes next;
  3. on a tie, of the organization served least recently (round robin: one never served
     first), then of the one whose oldest waiting run has waited longest;
  4. that organization's oldest waiting run in that lane.
Round robin, not age, breaks ties because with few slots the organization whose run just
ended is always tied with the others at zero in flight: age alone would then hand its
next run the slot every time, and a tenant's backlog would run before another's first.
"""

from __future__ import annotations

import heapq
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime

LANES = ("interactive", "batch")


@dataclass(frozen=True)
class Waiter:
    ticket_id: int
    run_id: uuid.UUID
    organization_id: int
    priority: str
    enqueued_at: datetime
    schema_name: str = ""

    @property
    def lane(self) -> int:
        return LANES.index(self.priority)

    def sort_key(self) -> tuple[int, datetime, int]:
        return (self.lane, self.enqueued_at, self.ticket_id)


def fair_order(
    waiters: Iterable[Waiter],
    *,
    in_flight: Mapping[int, int],
    last_served: Mapping[int, int] | None = None,
    limits: Mapping[int, int] | None = None,
    then_over_limit: bool = False,
) -> Iterator[Waiter]:
    """The waiters in the order slots would go to them, one at a time, none finishing.

    `last_served`: organization -> the number of its latest dispatch (higher: more recent).
    With `limits` (organization -> most runs in flight) an organization at its limit is
    passed over; `then_over_limit` then goes on with those, in the same order, as if their
    runs had finished (an estimate for queue positions: they start as their own runs end)."""
    queues: dict[int, deque[Waiter]] = {}
    for waiter in sorted(waiters, key=Waiter.sort_key):
        queues.setdefault(waiter.organization_id, deque()).append(waiter)
    counts = {organization_id: in_flight.get(organization_id, 0) for organization_id in queues}
    served = {organization_id: (last_served or {}).get(organization_id, 0) for organization_id in queues}
    yield from _serve(queues, counts, served, limits)
    if limits is not None and then_over_limit:
        yield from _serve(queues, counts, served, None)


def _serve(
    queues: dict[int, deque[Waiter]],
    counts: dict[int, int],
    served: dict[int, int],
    limits: Mapping[int, int] | None,
) -> Iterator[Waiter]:
    heap: list[tuple[int, int, int, datetime, int, int]] = []
    turn = max(served.values(), default=0)

    def push(organization_id: int) -> None:
        head = queues[organization_id][0]
        key = (head.lane, counts[organization_id], served[organization_id], head.enqueued_at, head.ticket_id)
        heapq.heappush(heap, (*key, organization_id))

    for organization_id, queue in queues.items():
        if queue:
            push(organization_id)
    while heap:
        organization_id = heapq.heappop(heap)[-1]
        if limits is not None and counts[organization_id] >= limits.get(organization_id, 0):
            continue  # left in its queue: only a run of its own finishing frees it
        queue = queues[organization_id]
        yield queue.popleft()
        counts[organization_id] += 1
        turn += 1
        served[organization_id] = turn
        if queue:
            push(organization_id)
