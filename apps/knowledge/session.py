"""The session layer: a run's own vector memory, in the memory of the process running it.

    memory = session_for(run_id)
    memory.add("tests run with `make test`; `pytest` alone misses the fixtures", kind="note")
    memory.add(observation, kind="observation", keep=True)     # worth keeping past the run
    memory.search("how do I run the tests?", k=3)              # -> [SessionHit(item, similarity)]
    session_end(run_id)                                        # at the run's end: all of it gone

What goes in: the agent's working notes (kept past the run by default), observations
(kept only when marked), and snippets retrieved from the organization's knowledge (never
kept: they are there already; their keys are remembered, so a run that succeeds can
credit them: apps/knowledge/sync.py).

An item is a text, its kind, metadata and its unit vector (always the offline MiniLM:
free, no database read, and one model for the whole run even if the organization's
index moves to another model meanwhile; nothing compares it with the global index).
The vectors sit in one preallocated float32 matrix; a search is one matrix-vector
product over it. Limits from the settings: at most
KNOWLEDGE_SESSION_MAX_ITEMS items (the least recently used goes first) and each item
forgotten KNOWLEDGE_SESSION_TTL_SECONDS after it was last used (added, or returned by a
search); a whole session unused that long is dropped by `sessions_sweep`.

Sessions live in a process-wide registry keyed by run id; everything is thread-safe.
Time is `time.monotonic()`; functions that depend on it take `now` for the tests.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from django.conf import settings

NOTE: Final = "note"
OBSERVATION: Final = "observation"
SNIPPET: Final = "snippet"
KINDS: Final = (NOTE, OBSERVATION, SNIPPET)
MAX_TEXT_CHARS: Final = 20_000

Embed = Callable[[Sequence[str]], np.ndarray]


def _default_embed(texts: Sequence[str]) -> np.ndarray:
    from apps.knowledge.embeddings import default_provider

    return np.asarray(default_provider().embed(list(texts)), dtype=np.float32)


@dataclass
class SessionItem:
    id: str  # stable for the same kind and text: adding it again refreshes it
    text: str
    kind: str
    metadata: dict[str, Any]
    keep: bool  # to be distilled into the organization's experience at the run's end
    chunk_key: str | None  # the global chunk it was retrieved from, if any
    added_at: float
    last_used_at: float
    row: int = field(repr=False, default=-1)


@dataclass(frozen=True)
class SessionHit:
    item: SessionItem
    similarity: float


def item_id(kind: str, text: str) -> str:
    return hashlib.blake2b(f"{kind}\0{text}".encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


class SessionMemory:
    """One run's memory. Use `session_for(run_id)` rather than making one."""

    def __init__(
        self,
        run_id: str,
        *,
        max_items: int | None = None,
        ttl_seconds: float | None = None,
        embed: Embed | None = None,
    ) -> None:
        self.run_id = run_id
        self.max_items = max(
            1, int(max_items if max_items is not None else settings.KNOWLEDGE_SESSION_MAX_ITEMS)
        )
        self.ttl_seconds = float(
            ttl_seconds if ttl_seconds is not None else settings.KNOWLEDGE_SESSION_TTL_SECONDS
        )
        self._embed = embed or _default_embed
        self._lock = threading.RLock()
        self._items: OrderedDict[str, SessionItem] = OrderedDict()  # least recently used first
        self._vectors: np.ndarray | None = None  # (max_items, dimension)
        self._live: np.ndarray = np.zeros(self.max_items, dtype=bool)
        self._free: list[int] = list(range(self.max_items - 1, -1, -1))
        self.retrieved_keys: set[str] = set()
        self.last_used_at = time.monotonic()
        self.evicted = 0
        self.expired = 0

    # --- writing -------------------------------------------------------------------------------

    def add(
        self,
        text: str,
        kind: str = NOTE,
        metadata: dict[str, Any] | None = None,
        *,
        keep: bool | None = None,
        chunk_key: str | None = None,
        vector: np.ndarray | None = None,
        now: float | None = None,
    ) -> SessionItem:
        """Remember `text`. Notes are kept past the run unless keep=False; observations
        only with keep=True; snippets never. The same kind and text again: refreshed."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}")
        text = (text or "").strip()[:MAX_TEXT_CHARS]
        if not text:
            raise ValueError("an empty text has nothing to remember")
        wanted_keep = kind != SNIPPET and (keep if keep is not None else kind == NOTE)
        identifier = item_id(kind, text)
        with self._lock:
            now = time.monotonic() if now is None else now
            self.last_used_at = now
            existing = self._items.get(identifier)
            if existing is not None:
                existing.last_used_at = now
                existing.keep = existing.keep or wanted_keep
                existing.metadata.update(metadata or {})
                self._items.move_to_end(identifier)
                return existing
        if vector is None:
            vector = self._embed([text])[0]
        row_vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        with self._lock:
            self._expire_locked(now)
            while len(self._items) >= self.max_items:
                _, oldest = self._items.popitem(last=False)
                self._release(oldest)
                self.evicted += 1
            if self._vectors is None:
                self._vectors = np.zeros((self.max_items, row_vector.shape[0]), dtype=np.float32)
            if row_vector.shape[0] != self._vectors.shape[1]:
                raise ValueError("the vector's dimension differs from the session's")
            row = self._free.pop()
            self._vectors[row] = row_vector
            self._live[row] = True
            item = SessionItem(
                id=identifier,
                text=text,
                kind=kind,
                metadata=dict(metadata or {}),
                keep=wanted_keep,
                chunk_key=chunk_key,
                added_at=now,
                last_used_at=now,
                row=row,
            )
            self._items[identifier] = item
            if chunk_key:
                self.retrieved_keys.add(chunk_key)
            return item

    def note_retrieved(self, keys: Sequence[str]) -> None:
        """Global chunks this run retrieved (credited if the run succeeds)."""
        with self._lock:
            self.retrieved_keys.update(keys)

    def forget(self, identifier: str) -> bool:
        with self._lock:
            item = self._items.pop(identifier, None)
            if item is None:
                return False
            self._release(item)
            return True

    def _release(self, item: SessionItem) -> None:
        self._live[item.row] = False
        self._free.append(item.row)

    # --- reading -------------------------------------------------------------------------------

    def search(
        self,
        query: str,
        k: int = 5,
        *,
        kinds: Sequence[str] | None = None,
        vector: np.ndarray | None = None,
        now: float | None = None,
    ) -> list[SessionHit]:
        """The k items most similar to the query (cosine), most similar first; each found
        counts as used (its TTL starts again)."""
        if k < 1 or not self._items:
            return []
        if vector is None:
            query = (query or "").strip()
            if not query:
                return []
            vector = self._embed([query])[0]
        query_vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        with self._lock:
            now = time.monotonic() if now is None else now
            self.last_used_at = now
            self._expire_locked(now)
            if not self._items or self._vectors is None:
                return []
            similarities = self._vectors @ query_vector
            mask = self._live.copy()
            if kinds:
                allowed = set(kinds)
                for item in self._items.values():
                    if item.kind not in allowed:
                        mask[item.row] = False
            similarities = np.where(mask, similarities, -np.inf)
            count = min(k, int(mask.sum()))
            if count == 0:
                return []
            top = np.argpartition(-similarities, count - 1)[:count]
            top = top[np.argsort(-similarities[top], kind="stable")]
            by_row = {item.row: item for item in self._items.values()}
            hits = []
            for row in top.tolist():
                item = by_row[row]
                item.last_used_at = now
                self._items.move_to_end(item.id)
                hits.append(SessionHit(item=item, similarity=float(similarities[row])))
            return hits

    @property
    def items(self) -> list[SessionItem]:
        """The live items, least recently used first."""
        with self._lock:
            return list(self._items.values())

    def kept_items(self) -> list[SessionItem]:
        """What the run marked worth keeping, in the order first added."""
        with self._lock:
            return sorted(
                (item for item in self._items.values() if item.keep), key=lambda item: item.added_at
            )

    def __len__(self) -> int:
        return len(self._items)

    # --- forgetting ----------------------------------------------------------------------------

    def expire(self, now: float | None = None) -> int:
        """Forget the items unused for the TTL; how many."""
        with self._lock:
            return self._expire_locked(time.monotonic() if now is None else now)

    def _expire_locked(self, now: float) -> int:
        cutoff = now - self.ttl_seconds
        stale = [item for item in self._items.values() if item.last_used_at < cutoff]
        for item in stale:
            del self._items[item.id]
            self._release(item)
        self.expired += len(stale)
        return len(stale)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._vectors = None
            self._live[:] = False
            self._free = list(range(self.max_items - 1, -1, -1))
            self.retrieved_keys.clear()

    def idle(self, now: float) -> bool:
        return now - self.last_used_at > self.ttl_seconds


# --- the registry ---------------------------------------------------------------------------------

_sessions: dict[str, SessionMemory] = {}
_registry_lock = threading.Lock()


def session_for(run_id: str) -> SessionMemory:
    """The run's memory, made on first use."""
    run_id = str(run_id)
    if not run_id:
        raise ValueError("a session needs a run id")
    with _registry_lock:
        memory = _sessions.get(run_id)
        if memory is None:
            memory = _sessions[run_id] = SessionMemory(run_id)
        return memory


def session_find(run_id: str) -> SessionMemory | None:
    """The run's memory if this process has one (never made here)."""
    with _registry_lock:
        return _sessions.get(str(run_id))


def session_end(run_id: str) -> int:
    """The run is over: its memory is dropped and freed; how many items it held."""
    with _registry_lock:
        memory = _sessions.pop(str(run_id), None)
    if memory is None:
        return 0
    count = len(memory)
    memory.clear()
    return count


def sessions_sweep(now: float | None = None) -> dict[str, int]:
    """Drop the sessions unused for their TTL (a run that died without ending) and
    expire old items in the others."""
    now = time.monotonic() if now is None else now
    with _registry_lock:
        idle = [run_id for run_id, memory in _sessions.items() if memory.idle(now)]
        dropped = [_sessions.pop(run_id) for run_id in idle]
        active = list(_sessions.values())
    for memory in dropped:
        memory.clear()
    expired = sum(memory.expire(now) for memory in active)
    return {"sessions_dropped": len(dropped), "items_expired": expired}


def sessions_active() -> list[str]:
    with _registry_lock:
        return sorted(_sessions)
