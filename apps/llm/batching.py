"""The request queue in front of the in-process local model (apps/llm/providers/local.py).

llama.cpp is blocking C code, so every call on a loaded model runs on that model's own
worker thread and the event loop only awaits the result. What llama-cpp-python lets us
batch, and what this module does with it:

- Generation: not batched, serialized. llama-cpp-python's Llama decodes one sequence at
  a time (create_completion / create_chat_completion take one prompt; continuous
  batching across requests lives in llama.cpp's own HTTP server, which keeps per-slot
  state the Python binding does not expose). Two generations on one context at once
  would corrupt its KV cache, and a second context would compete for the same cores.
  So one worker thread per model runs jobs one at a time in arrival order; between
  organizations the gateway's fair queue (apps/llm/queue.py) has already decided that
  order. A caller that gives up (timeout, disconnect) stops its job: before it starts
  it is skipped, while it runs it stops at the next token.
- Embeddings: batched. Llama.embed() packs several inputs as separate sequences into
  one decode call. Requests that arrive while the embedding worker is busy wait
  together and are embedded in one call; a request that finds the worker idle runs at
  once, so batching never adds a wait. Each caller gets exactly its own vectors back.
- Tokenization (token counts for context-window decisions): reads only the
  vocabulary, never the context, costs microseconds per prompt and needs no worker, so
  it runs on the caller's thread; batching it would gain nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from apps.llm.providers.base import RateLimited

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_MAX_PENDING = 64


class QueueFull(RateLimited):
    """Too many requests already wait for this local model."""

    code = "local_queue_full"


def _deliver(loop: asyncio.AbstractEventLoop, callback: Callable[..., Any], *args: Any) -> None:
    """Hand a result to the caller's loop from the worker thread."""
    with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody waits any more
        loop.call_soon_threadsafe(callback, *args)


def _resolve(future: asyncio.Future[T], result: T) -> None:
    if not future.done():
        future.set_result(result)


def _reject(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


# A job runs on the worker and may return what tells its caller it is done; that runs
# after the worker's own bookkeeping, so a caller that has its answer sees the job gone.
Finish = Callable[[], None]


@dataclass(eq=False)
class _Job:
    run: Callable[[threading.Event], Finish | None]
    cancel: threading.Event


class ModelWorker:
    """One thread that owns a model's llama.cpp context and runs the jobs for it in order.

    `call(fn)` runs `fn(cancel)` on the thread and returns its result; `stream(fn)` runs
    `fn(cancel, emit)` and yields what it emits as it emits it. `cancel` is set when the
    caller stops waiting; long jobs check it between tokens."""

    def __init__(self, name: str, *, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        self.name = name
        self.max_pending = max_pending
        self._jobs: list[_Job] = []
        self._condition = threading.Condition()
        self._pending = 0
        self._thread: threading.Thread | None = None
        self.completed = 0  # jobs run to the end (or to their failure), for tests and metrics

    @property
    def pending(self) -> int:
        """Jobs waiting or running."""
        return self._pending

    def submit(self, run: Callable[[threading.Event], Finish | None]) -> threading.Event:
        """Queue `run(cancel)`; returns the event that cancels it."""
        job = _Job(run=run, cancel=threading.Event())
        with self._condition:
            if self._pending >= self.max_pending:
                raise QueueFull(
                    f"the local model has {self._pending} requests waiting; try again shortly",
                    retry_after=1.0,
                    provider="local",
                )
            self._pending += 1
            self._jobs.append(job)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name=f"llm-local {self.name}", daemon=True)
                self._thread.start()
            self._condition.notify()
        return job.cancel

    def _loop(self) -> None:
        while True:
            with self._condition:
                while not self._jobs:
                    self._condition.wait()
                job = self._jobs.pop(0)
            finish: Finish | None = None
            try:
                if not job.cancel.is_set():
                    finish = job.run(job.cancel)
            except BaseException:  # a job reports its own errors; this is a bug in one
                logger.exception("Local model job failed on %s", self.name)
            finally:
                with self._condition:
                    self._pending -= 1
                    self.completed += 1
            if finish is not None:
                try:
                    finish()
                except BaseException:
                    logger.exception("Local model job could not report back on %s", self.name)

    async def call(self, fn: Callable[[threading.Event], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def run(cancel: threading.Event) -> Finish:
            try:
                result = fn(cancel)
            except BaseException as error:
                return functools.partial(_deliver, loop, _reject, future, error)
            return lambda: _deliver(loop, _resolve, future, result)

        cancel = self.submit(run)
        try:
            return await future
        finally:
            cancel.set()  # done already, or the caller gave up: either way the job may stop

    async def stream(self, fn: Callable[[threading.Event, Callable[[T], None]], None]) -> AsyncIterator[T]:
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def run(cancel: threading.Event) -> Finish:
            try:
                fn(cancel, lambda item: _deliver(loop, items.put_nowait, ("item", item)))
            except BaseException as error:
                return functools.partial(_deliver, loop, items.put_nowait, ("error", error))
            return lambda: _deliver(loop, items.put_nowait, ("end", None))

        cancel = self.submit(run)
        try:
            while True:
                kind, value = await items.get()
                if kind == "item":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    return
        finally:
            cancel.set()


@dataclass(eq=False)
class _EmbedRequest:
    inputs: list[str]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[list[float]]]
    abandoned: threading.Event = field(default_factory=threading.Event)


class EmbeddingBatcher:
    """Merges the embedding requests that wait for the worker into one `embed_many` call.

    `embed_many(texts)` runs on the worker and returns one vector per text, in order."""

    def __init__(
        self,
        worker: ModelWorker,
        embed_many: Callable[[list[str]], Sequence[Sequence[float]]],
        *,
        max_waiting_inputs: int = 4096,
    ) -> None:
        self.worker = worker
        self._embed_many = embed_many
        self.max_waiting_inputs = max_waiting_inputs
        self._lock = threading.Lock()
        self._waiting: list[_EmbedRequest] = []
        self._scheduled = False
        self.batches = 0  # embed_many calls made
        self.requests = 0  # requests served by them

    async def embed(self, inputs: list[str]) -> list[list[float]]:
        if not inputs:
            return []
        loop = asyncio.get_running_loop()
        request = _EmbedRequest(inputs=list(inputs), loop=loop, future=loop.create_future())
        with self._lock:
            waiting = sum(len(other.inputs) for other in self._waiting)
            if waiting + len(inputs) > self.max_waiting_inputs:
                raise QueueFull(
                    f"the local model has {waiting} texts waiting to be embedded; try again shortly",
                    retry_after=1.0,
                    provider="local",
                )
            self._waiting.append(request)
            schedule = not self._scheduled
            self._scheduled = True
        if schedule:
            try:
                self.worker.submit(self._drain)
            except QueueFull:
                with self._lock:
                    self._waiting.remove(request)
                    self._scheduled = False
                raise
        try:
            return await request.future
        finally:
            request.abandoned.set()

    def _drain(self, cancel: threading.Event) -> Finish | None:
        with self._lock:
            batch, self._waiting = self._waiting, []
            self._scheduled = False
        batch = [request for request in batch if not request.abandoned.is_set()]
        if not batch:
            return None
        texts = [text for request in batch for text in request.inputs]
        try:
            vectors = self._embed_many(texts)
            if len(vectors) != len(texts):
                raise RuntimeError(f"{len(vectors)} embeddings came back for {len(texts)} texts")
        except BaseException as error:
            failed = error

            def fail() -> None:
                for request in batch:
                    _deliver(request.loop, _reject, request.future, failed)

            return fail
        self.batches += 1
        self.requests += len(batch)
        answers: list[tuple[_EmbedRequest, list[list[float]]]] = []
        start = 0
        for request in batch:
            answers.append(
                (request, [list(vector) for vector in vectors[start : start + len(request.inputs)]])
            )
            start += len(request.inputs)

        def finish() -> None:
            for request, own in answers:
                _deliver(request.loop, _resolve, request.future, own)

        return finish
