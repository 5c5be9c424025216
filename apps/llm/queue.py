"""A fair priority queue in front of each provider endpoint.

At most LLM_QUEUE_PROVIDER_CONCURRENCY calls (default 16; LLM_QUEUE_LOCAL_CONCURRENCY,
default 2, for the in-process local model) run at once per provider endpoint, and
at most LLM_QUEUE_ORGANIZATION_CONCURRENCY (default 8) per organization on it.
When a slot frees, the waiter chosen is:
  1. of the highest priority waiting (interactive > agent > batch), then
  2. of the next organization in round-robin order among those waiting at that
     priority and under their own limit (each organization served moves to the back),
     then
  3. that organization's oldest waiter at that priority.
So an organization that queues a thousand calls delays another's next call by at
most one call per organization ahead of it, never by the thousand.

Queues live per event loop (asyncio primitives belong to one loop); one process
serving many loops (sync callers through chat_sync) gets a queue per loop.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from django.conf import settings
from prometheus_client import Gauge

from apps.llm.types import Priority

PRIORITIES: tuple[Priority, ...] = ("interactive", "agent", "batch")
QUEUE_WAITING = Gauge("llm_queue_waiting", "LLM calls waiting for a provider slot", ["provider"])


@dataclass
class _Level:
    # organization -> its waiters (futures) at this priority, oldest first
    waiters: dict[int, deque[asyncio.Future[None]]] = field(default_factory=dict)
    rotation: deque[int] = field(default_factory=deque)  # organizations in round-robin order


class FairQueue:
    def __init__(self, name: str, *, concurrency: int, per_organization: int) -> None:
        self.name = name
        self.concurrency = concurrency
        self.per_organization = per_organization
        self.running = 0
        self.running_by_organization: dict[int, int] = {}
        self._levels = {priority: _Level() for priority in PRIORITIES}

    @property
    def waiting(self) -> int:
        return sum(len(q) for level in self._levels.values() for q in level.waiters.values())

    def _may_run(self, organization_id: int) -> bool:
        return (
            self.running < self.concurrency
            and self.running_by_organization.get(organization_id, 0) < self.per_organization
        )

    def _start(self, organization_id: int) -> None:
        self.running += 1
        self.running_by_organization[organization_id] = (
            self.running_by_organization.get(organization_id, 0) + 1
        )

    def _finish(self, organization_id: int) -> None:
        self.running -= 1
        left = self.running_by_organization.get(organization_id, 1) - 1
        if left:
            self.running_by_organization[organization_id] = left
        else:
            self.running_by_organization.pop(organization_id, None)
        self._wake()

    def _wake(self) -> None:
        """Hand free slots to waiters, in the order the module's docstring describes."""
        while self.running < self.concurrency:
            chosen = self._next_waiter()
            if chosen is None:
                return
            organization_id, future = chosen
            self._start(organization_id)
            future.set_result(None)

    def _next_waiter(self) -> tuple[int, asyncio.Future[None]] | None:
        for priority in PRIORITIES:
            level = self._levels[priority]
            for _ in range(len(level.rotation)):
                organization_id = level.rotation[0]
                level.rotation.rotate(-1)  # served or not, it goes to the back
                waiters = level.waiters.get(organization_id)
                if not waiters:
                    continue
                if self.running_by_organization.get(organization_id, 0) >= self.per_organization:
                    continue
                future = waiters.popleft()
                if not waiters:
                    del level.waiters[organization_id]
                    level.rotation.remove(organization_id)
                return organization_id, future
        return None

    def _remove(self, priority: Priority, organization_id: int, future: asyncio.Future[None]) -> None:
        level = self._levels[priority]
        waiters = level.waiters.get(organization_id)
        if waiters is None or future not in waiters:
            return
        waiters.remove(future)
        if not waiters:
            del level.waiters[organization_id]
            level.rotation.remove(organization_id)

    @asynccontextmanager
    async def slot(self, organization_id: int, priority: Priority = "interactive") -> AsyncIterator[None]:
        if self._may_run(organization_id) and not self.waiting:
            self._start(organization_id)
        else:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            level = self._levels[priority]
            if organization_id not in level.waiters:
                level.waiters[organization_id] = deque()
                level.rotation.append(organization_id)
            level.waiters[organization_id].append(future)
            self._wake()  # a slot may be free for us (others waiting may be at their limit)
            QUEUE_WAITING.labels(self.name).inc()
            try:
                await future
            except BaseException:
                if future.done() and not future.cancelled():
                    self._finish(organization_id)  # granted just as we were cancelled: give it back
                else:
                    self._remove(priority, organization_id, future)
                raise
            finally:
                QUEUE_WAITING.labels(self.name).dec()
        try:
            yield
        finally:
            self._finish(organization_id)


class Queues:
    """One FairQueue per provider endpoint and event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, FairQueue]] = (
            weakref.WeakKeyDictionary()
        )

    def get(self, name: str, *, provider_kind: str) -> FairQueue:
        loop = asyncio.get_running_loop()
        with self._lock:
            queues = self._queues.setdefault(loop, {})
            queue = queues.get(name)
            if queue is None:
                default = 16
                concurrency = int(getattr(settings, "LLM_QUEUE_PROVIDER_CONCURRENCY", default))
                if provider_kind == "local":
                    concurrency = int(getattr(settings, "LLM_QUEUE_LOCAL_CONCURRENCY", 2))
                queue = queues[name] = FairQueue(
                    name,
                    concurrency=concurrency,
                    per_organization=int(getattr(settings, "LLM_QUEUE_ORGANIZATION_CONCURRENCY", 8)),
                )
            return queue
