"""The run's event stream: persisted first, then broadcast.

Every write to a run's history goes through `event_append`. It numbers the event
(seq = the run's last_seq + 1, under a row lock on the run, so two writers never
take the same number and there is never a gap), stores it, and after the
transaction commits sends it to the run's Channels group `t.<schema>.run.<id>`.
A client that missed a broadcast (it was reconnecting) reads the gap back from the
table by seq, so the table is the truth and the broadcast only a hint.

`step_key` makes a step's write idempotent: appending with a key the run already
has returns the stored event and writes nothing, which is what a step repeated by
another worker after a crash relies on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from decimal import Decimal
from typing import Any

from channels.layers import get_channel_layer
from django.db import IntegrityError, connection, transaction

from apps.agents.models import AgentRun, Event
from apps.tenancy.db import tenant_connection
from apps.tenancy.groups import tenant_group

logger = logging.getLogger(__name__)


def run_group(run_id: object, schema_name: str | None = None) -> str:
    return tenant_group(f"run.{run_id}", schema_name)


def event_payload(event: Event) -> dict[str, Any]:
    """The wire shape of an event (REST, WebSocket and the CLI all use it)."""
    return {
        "run": str(event.run_id),
        "seq": event.seq,
        "kind": event.kind,
        "step": event.step,
        "payload": event.payload,
        "input_tokens": event.input_tokens,
        "output_tokens": event.output_tokens,
        "cost": str(event.cost),
        "created_at": event.created_at.isoformat(),
    }


@transaction.atomic
def event_append(
    *,
    run: AgentRun,
    kind: str,
    payload: dict[str, Any],
    step: int = 0,
    step_key: str = "",
    input_tokens: int = 0,
    output_tokens: int = 0,
    cost: Decimal = Decimal("0"),
) -> Event:
    """Store the run's next event and broadcast it after commit; with a step_key the run
    already has, return that event unchanged."""
    if step_key:
        existing = Event.objects.filter(run_id=run.pk, step_key=step_key).first()
        if existing is not None:
            return existing
    # Numbering and the row lock in one round trip: the UPDATE locks the run's row until
    # commit, which serialises writers (worker, API, scheduler). A writer that stored the
    # same step_key meanwhile makes our INSERT break the unique (run, step_key) constraint;
    # the savepoint then undoes our number too, so the sequence keeps no gap.
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(
                    f"UPDATE {AgentRun._meta.db_table} SET last_seq = last_seq + 1"  # noqa: S608 (our table)
                    " WHERE id = %s RETURNING last_seq",
                    [run.pk],
                )
                row = cursor.fetchone()
            if row is None:
                raise AgentRun.DoesNotExist(f"No run {run.pk}.")
            seq = int(row[0])
            event = Event.objects.create(
                run_id=run.pk,
                seq=seq,
                kind=kind,
                step=step,
                payload=payload,
                step_key=step_key,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cost=cost,
            )
    except IntegrityError:
        existing = Event.objects.filter(run_id=run.pk, step_key=step_key).first() if step_key else None
        if existing is None:
            raise
        return existing
    run.last_seq = seq
    group = run_group(run.pk, tenant_connection().schema_name)
    message = {"type": "run.event", "event": event_payload(event)}
    transaction.on_commit(lambda: _broadcast(group, message))
    return event


def _broadcast(group: str, message: dict[str, Any]) -> None:
    _broadcaster().send(group, message)


class _Broadcaster:
    """Sends this process's broadcasts, in order, from one event loop of its own in a daemon
    thread. async_to_sync per event made a thread, an event loop and a Redis connection
    pool each time (several ms per event, three events a step). The writer does not wait:
    a broadcast is a hint, and a watcher that misses one reads the gap from the table."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.queue: asyncio.Queue[tuple[str, dict[str, Any]]] | None = None
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), name="agents-broadcast", daemon=True).start()
        ready.wait()

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.queue = asyncio.Queue()
        ready.set()
        self.loop.run_until_complete(self._drain(self.queue))

    async def _drain(self, queue: asyncio.Queue[tuple[str, dict[str, Any]]]) -> None:
        while True:
            group, message = await queue.get()
            layer = get_channel_layer()
            if layer is None:
                continue
            try:
                await layer.group_send(group, message)
            except Exception:
                logger.warning(
                    "Broadcast to %s failed; watchers read it from the table", group, exc_info=True
                )

    def send(self, group: str, message: dict[str, Any]) -> None:
        queue = self.queue
        assert queue is not None  # set before __init__ returns
        self.loop.call_soon_threadsafe(queue.put_nowait, (group, message))


_broadcasters: dict[int, _Broadcaster] = {}
_broadcasters_lock = threading.Lock()


def _broadcaster() -> _Broadcaster:
    # Per process id: a forked worker child must not use its parent's (thread-less) copy.
    pid = os.getpid()
    with _broadcasters_lock:
        broadcaster = _broadcasters.get(pid)
        if broadcaster is None:
            broadcaster = _broadcasters[pid] = _Broadcaster()
    return broadcaster
