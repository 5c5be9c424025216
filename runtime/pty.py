"""Terminal sessions: one shell on a pseudo-terminal per (sandbox, session name), watched by
any number of attached streams.

A session keeps the last `scrollback_bytes` of output, so a stream that attaches later
(a second viewer, a browser that reconnected) can replay what the screen showed. Every
attached stream receives all output and may write; who is allowed to type is decided by
the platform before it forwards a keystroke. A reader that cannot keep up is detached
rather than slowing the shell or the other readers down, and holds at most
`max_pending_bytes` meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from runtime.backends.base import PtyProcess

logger = logging.getLogger("runtime.pty")

CLOSE_WAIT_SECONDS = 5.0


@dataclass(frozen=True)
class Exited:
    exit_code: int


class Overflowed:
    """The reader fell too far behind and was detached."""


class Attachment:
    """One attached stream's pending output (bytes, then Exited or Overflowed last)."""

    def __init__(self, max_pending_bytes: int) -> None:
        self.queue: asyncio.Queue[bytes | Exited | Overflowed] = asyncio.Queue()
        self.pending = 0
        self.max_pending_bytes = max_pending_bytes
        self.closed = False

    def push(self, item: bytes | Exited | Overflowed) -> bool:
        """False once this reader has been cut off for falling behind."""
        if self.closed:
            return False
        if isinstance(item, bytes):
            if self.pending + len(item) > self.max_pending_bytes:
                self.closed = True
                self.queue.put_nowait(Overflowed())
                return False
            self.pending += len(item)
        else:
            self.closed = True
        self.queue.put_nowait(item)
        return True

    async def get(self) -> bytes | Exited | Overflowed:
        item = await self.queue.get()
        if isinstance(item, bytes):
            self.pending -= len(item)
        return item


class PtySession:
    def __init__(
        self, name: str, process: PtyProcess, *, rows: int, cols: int, scrollback_bytes: int
    ) -> None:
        self.name = name
        self.process = process
        self.rows = rows
        self.cols = cols
        self.scrollback_bytes = scrollback_bytes
        self.scrollback = bytearray()
        self.attachments: set[Attachment] = set()
        self.exit_code: int | None = None
        self.finished = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    def start(self, on_finished: Callable[[PtySession], None]) -> None:
        self._reader = asyncio.create_task(self._pump(on_finished), name=f"pty-{self.name}")

    async def _pump(self, on_finished: Callable[[PtySession], None]) -> None:
        try:
            while data := await self.process.read():
                self.scrollback += data
                if len(self.scrollback) > self.scrollback_bytes:
                    del self.scrollback[: len(self.scrollback) - self.scrollback_bytes]
                for attachment in list(self.attachments):
                    if not attachment.push(data):
                        self.attachments.discard(attachment)
            self.exit_code = await self.process.wait()
        except Exception:
            logger.exception("terminal session %s failed", self.name)
            self.exit_code = -1
            with contextlib.suppress(Exception):
                await self.process.kill()
        finally:
            final = Exited(self.exit_code if self.exit_code is not None else -1)
            for attachment in self.attachments:
                attachment.push(final)
            self.attachments.clear()
            on_finished(self)
            self.finished.set()

    def attach(self, *, replay: bool, max_pending_bytes: int) -> tuple[Attachment, bytes]:
        """A new attachment and the scrollback to show first, taken at the same instant so that
        no output is lost or shown twice."""
        attachment = Attachment(max_pending_bytes)
        if self.finished.is_set():
            attachment.push(Exited(self.exit_code if self.exit_code is not None else -1))
        else:
            self.attachments.add(attachment)
        return attachment, bytes(self.scrollback) if replay else b""

    def detach(self, attachment: Attachment) -> None:
        self.attachments.discard(attachment)

    async def write(self, data: bytes) -> None:
        if not self.finished.is_set():
            await self.process.write(data)

    async def resize(self, rows: int, cols: int) -> None:
        if not self.finished.is_set():
            await self.process.resize(rows, cols)
            self.rows, self.cols = rows, cols

    async def close(self) -> None:
        """Kill the shell and wait until every attachment has been told it exited."""
        if not self.finished.is_set():
            with contextlib.suppress(Exception):
                await self.process.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.finished.wait(), CLOSE_WAIT_SECONDS)
        if not self.finished.is_set() and self._reader is not None:
            self._reader.cancel()


class PtySessions:
    """The terminal sessions of one sandbox."""

    def __init__(self, scrollback_bytes: int) -> None:
        self.scrollback_bytes = scrollback_bytes
        self.sessions: dict[str, PtySession] = {}
        self._lock = asyncio.Lock()

    def names(self) -> list[str]:
        return sorted(self.sessions)

    async def open(
        self, name: str, spawn: Callable[[], Awaitable[PtyProcess]], *, rows: int, cols: int
    ) -> tuple[PtySession, bool]:
        """The session called `name`, started with spawn() when there is none; (session, created)."""
        async with self._lock:
            session = self.sessions.get(name)
            if session is not None and not session.finished.is_set():
                return session, False
            process = await spawn()
            session = PtySession(name, process, rows=rows, cols=cols, scrollback_bytes=self.scrollback_bytes)
            self.sessions[name] = session
            session.start(self._forget)
            return session, True

    def _forget(self, session: PtySession) -> None:
        if self.sessions.get(session.name) is session:
            del self.sessions[session.name]

    async def close(self, name: str) -> bool:
        session = self.sessions.get(name)
        if session is None:
            return False
        await session.close()
        return True

    async def close_all(self) -> None:
        await asyncio.gather(*(session.close() for session in list(self.sessions.values())))
