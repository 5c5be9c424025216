"""The vector index: Chroma, one collection per organization. The only module that talks to Chroma.

    index = current_index()            # the current organization's collection
    index.upsert(keys, vectors, metadatas)
    index.query(vector, n=40, kinds=["repository"], source_ids=[3])  # -> [IndexHit(key, similarity)]

Two modes, chosen by settings:
- CHROMA_URL set (``http://host:8000``, ``https://...``): a Chroma server through
  `chromadb.HttpClient`. Use it whenever more than one process writes (web and workers).
- otherwise Chroma embedded in this process (`chromadb.PersistentClient`) with its files
  under KNOWLEDGE_CHROMA_PATH. Chroma itself supports one process per path; ours take
  turns (see `_LocalTurns`): a lock file serializes writers against readers, and a process
  whose in-memory index another process has since written to reopens it first. Fine for
  one machine (`make run`: web and worker); at scale, run a Chroma server.

What the index holds per chunk: its key (KnowledgeChunk.key, so sending it again
overwrites), its vector and the metadata searches filter on (kind, source_id). No text:
PostgreSQL is the record, and a search reads the chunks' rows by key.

Tenant isolation: the collection is named after the schema of the current database
connection (set by the tenant middleware or a task's schema context), `ay_<schema>`,
and nothing else picks a collection: no caller can name one. Vectors of different
embedding models never share a collection: the offline MiniLM's is `ay_<schema>`, a
gateway model's `ay_<schema>-<12 hex digits of its name's sha256>` (schema names have no
"-", so no organization's name can be read as another's with a model). Which model an
organization uses is the services' business (apps/knowledge/services.py); they pass it.

Collections outlive what they index only by accident (an organization deleted while
Chroma was down, a model switched away from): `collection_names()` lists ours and
`collection_drop(name)` removes one, for the sweep (apps/knowledge/tasks.py).

Every failure of Chroma (unreachable, timed out, refusing) becomes `StoreUnavailable`
with a reason fit for a 503; the original is logged. Clients are made once per process
and per path or URL; telemetry is off; the collection uses cosine distance and never
Chroma's own embedder (we always pass vectors).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import urlsplit

import numpy as np
from django.conf import settings
from django.db import connection

from apps.core.errors import Unavailable

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.collection_configuration import CreateHNSWConfiguration
    from chromadb.api.models.Collection import Collection

logger = logging.getLogger(__name__)

T = TypeVar("T")

COLLECTION_PREFIX: Final = "ay_"
# Chroma's rule: 3-512 characters of [a-zA-Z0-9._-], starting and ending with a letter or
# digit. Our schema names (org_<slug with _>) always fit; anything else is refused.
_COLLECTION_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{1,510}[a-zA-Z0-9]$")
# A server that accepts the connection and then hangs must not hang a request.
HTTP_TIMEOUT_SECONDS: Final = 15.0
HTTP_CONNECT_TIMEOUT_SECONDS: Final = 3.0


class StoreUnavailable(Unavailable):
    """The index cannot be reached or refused the operation; `reason` says why, for people.
    A ServiceError, so an API view answers 503 with the reason."""

    code = "knowledge_index_unavailable"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class IndexHit:
    key: str
    similarity: float  # cosine similarity, 1 - Chroma's cosine distance


# --- clients ----------------------------------------------------------------------------------------

_clients: dict[tuple[str, str], ClientAPI] = {}
# Collection handles by (mode, path or URL, name): getting one is a round trip to a server.
_collections: dict[tuple[str, str, str], Collection] = {}
_clients_lock = threading.Lock()


def _mode() -> tuple[str, str]:
    url = str(getattr(settings, "CHROMA_URL", "") or "").strip()
    if url:
        return ("http", url)
    return ("path", str(settings.KNOWLEDGE_CHROMA_PATH))


def describe() -> str:
    """Where the index lives, for messages and logs (never a secret: no credentials in it)."""
    mode, where = _mode()
    if mode == "http":
        parts = urlsplit(where)
        return f"the Chroma server at {parts.hostname}:{parts.port or ''}".rstrip(":")
    return "the embedded Chroma index"


def _parse_url(url: str) -> tuple[str, int, bool]:
    parts = urlsplit(url if "//" in url else f"http://{url}")
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise StoreUnavailable(f"CHROMA_URL {url!r} is not an http(s) URL with a host.")
    ssl = parts.scheme == "https"
    try:
        port = parts.port or (443 if ssl else 8000)
    except ValueError:
        raise StoreUnavailable(f"CHROMA_URL {url!r} has an invalid port.") from None
    return parts.hostname, port, ssl


def _make_client(mode: str, where: str) -> ClientAPI:
    import chromadb
    from chromadb.config import Settings

    chroma_settings = Settings(anonymized_telemetry=False)
    if mode == "http":
        host, port, ssl = _parse_url(where)
        client = chromadb.HttpClient(host=host, port=port, ssl=ssl, settings=chroma_settings)
        _limit_http_time(client)
        return client
    return chromadb.PersistentClient(path=where, settings=chroma_settings)


def _limit_http_time(client: ClientAPI) -> None:
    """chromadb's HTTP client waits forever (httpx timeout=None); give it bounds."""
    import httpx

    session = getattr(getattr(client, "_server", None), "_session", None)
    if isinstance(session, httpx.Client):
        session.timeout = httpx.Timeout(HTTP_TIMEOUT_SECONDS, connect=HTTP_CONNECT_TIMEOUT_SECONDS)


def client() -> ClientAPI:
    """This process's client for the configured path or URL (made on first use)."""
    key = _mode()
    with _clients_lock:
        existing = _clients.get(key)
        if existing is not None:
            return existing
    # Outside the lock: connecting to a server can take a while.
    made = _guard(lambda: _make_client(*key))
    with _clients_lock:
        return _clients.setdefault(key, made)


def clients_reset() -> None:
    """Forget the clients made so far (tests point the settings elsewhere between tests)."""
    from chromadb.api.shared_system_client import SharedSystemClient

    with _clients_lock:
        _clients.clear()
        _collections.clear()
        _turns.clear()
        systems = list(SharedSystemClient._identifier_to_system.values())
        SharedSystemClient.clear_system_cache()
    for system in systems:  # closes an embedded index's files, a server client's connections
        try:
            system.stop()
        except Exception:
            logger.debug("stopping a Chroma client failed", exc_info=True)


def _reason(exc: Exception) -> str:
    import httpx

    where = describe()
    if isinstance(exc, httpx.TimeoutException):
        return f"{where} did not answer in time."
    if isinstance(exc, httpx.TransportError | ConnectionError):
        return f"{where} is not reachable ({exc})."
    message = str(exc).strip() or type(exc).__name__
    if "Could not connect" in message:
        return f"{where} is not reachable."
    return f"{where} failed: {message[:300]}"


def _guard(call: Callable[[], T]) -> T:
    try:
        return call()
    except StoreUnavailable:
        raise
    except Exception as exc:  # chromadb raises httpx errors, ValueError, bare Exception, Rust errors
        reason = _reason(exc)
        logger.warning("Knowledge index unavailable: %s", reason, exc_info=True)
        raise StoreUnavailable(reason) from exc


class _LocalTurns:
    """Embedded mode, several processes on one path (web and worker).

    Chroma keeps each collection's vector index in the memory of the process that opened it
    and writes it back to its files; a second process writing the same files unseen would
    be overwritten, and its additions would stay invisible to the first. So each operation
    takes a turn: an flock on `<path>/agentyard.turns` (shared to read, exclusive to write),
    whose content counts the writes. A process that finds the count moved since its last
    turn reopens its client (reloading the index from disk) before going on. Within a
    process, operations on the path run one at a time (a reopen must not pull the client
    from under another thread)."""

    FILE_NAME: Final = "agentyard.turns"

    def __init__(self, path: str) -> None:
        self.path = path
        self.seen: int | None = None
        self.lock = threading.RLock()

    def _read(self, fd: int) -> int:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 32).strip()
        return int(raw) if raw.isdigit() else 0

    @contextmanager
    def turn(self, *, write: bool) -> Iterator[None]:
        with self.lock:
            os.makedirs(self.path, exist_ok=True)
            fd = os.open(os.path.join(self.path, self.FILE_NAME), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if write else fcntl.LOCK_SH)
                count = self._read(fd)
                if self.seen is not None and count != self.seen:
                    _reopen_path(self.path)
                self.seen = count
                yield
                if write:
                    self.seen = count + 1
                    os.lseek(fd, 0, os.SEEK_SET)
                    os.ftruncate(fd, 0)
                    os.write(fd, str(self.seen).encode())
            finally:
                os.close(fd)  # releases the flock


_turns: dict[str, _LocalTurns] = {}


def _turn(*, write: bool) -> AbstractContextManager[None]:
    """The turn to take for an operation: none with a server, `_LocalTurns` embedded."""
    mode, where = _mode()
    if mode != "path":
        return nullcontext()
    with _clients_lock:
        turns = _turns.get(where)
        if turns is None:
            turns = _turns[where] = _LocalTurns(where)
    return turns.turn(write=write)


def _reopen_path(path: str) -> None:
    """Drop this process's client of an embedded path; the next use reloads it from disk."""
    from chromadb.api.shared_system_client import SharedSystemClient

    with _clients_lock:
        _clients.pop(("path", path), None)
        for key in [key for key in _collections if key[:2] == ("path", path)]:
            del _collections[key]
        system = SharedSystemClient._identifier_to_system.pop(path, None)
        SharedSystemClient._identifier_to_refcount.pop(path, None)
    if system is not None:
        try:
            system.stop()
        except Exception:
            logger.debug("stopping a Chroma client failed", exc_info=True)


def ping() -> str | None:
    """None if the index answers, else the reason."""
    try:
        with _turn(write=False):
            _guard(lambda: client().heartbeat())
    except StoreUnavailable as exc:
        return exc.reason
    return None


# --- one organization's collection ------------------------------------------------------------------


MODEL_SEPARATOR: Final = "-"


def collection_name(schema_name: str, embedder: str = "") -> str:
    """The collection of a schema for the vectors of `embedder` ("" the offline MiniLM)."""
    if MODEL_SEPARATOR in schema_name:
        raise ValueError(f"schema {schema_name!r} gives no valid Chroma collection name")
    name = COLLECTION_PREFIX + schema_name
    if embedder:
        name += MODEL_SEPARATOR + hashlib.sha256(embedder.encode()).hexdigest()[:12]
    if not _COLLECTION_NAME.match(name) or ".." in name:
        raise ValueError(f"schema {schema_name!r} gives no valid Chroma collection name")
    return name


def collection_schema(name: str) -> str | None:
    """The schema a collection of ours belongs to; None for a name that is not ours."""
    if not name.startswith(COLLECTION_PREFIX):
        return None
    schema = name[len(COLLECTION_PREFIX) :].split(MODEL_SEPARATOR, 1)[0]
    return schema or None


def collection_names() -> list[str]:
    """Every collection of ours in the index (any schema, any model). Embedded, with no
    folder yet: none (and nothing is created)."""
    mode, where = _mode()
    if mode == "path" and not os.path.isdir(where):
        return []

    def send() -> list[str]:
        return [str(collection.name) for collection in client().list_collections()]

    try:
        with _turn(write=False):
            names = _guard(send)
    except OSError as exc:
        raise StoreUnavailable(f"{describe()} cannot be opened ({exc}).") from exc
    return sorted(name for name in names if collection_schema(name) is not None)


def collection_drop(name: str) -> None:
    """One collection of ours gone (nothing if it is gone already)."""
    if collection_schema(name) is None:
        raise ValueError(f"{name!r} is not a knowledge collection")
    OrganizationIndex(name).drop()


def _current_schema() -> str:
    schema = str(getattr(connection, "schema_name", "") or "")
    public = getattr(settings, "PUBLIC_SCHEMA_NAME", "public")
    if not schema or schema == public:
        # A programming error, not bad input: knowledge only exists inside an organization.
        raise RuntimeError("the knowledge index is used outside an organization's schema")
    return schema


# Chroma's defaults (16 neighbours, construction 100, search 100) gave recall@10 of only
# 0.73-0.77 against exact search at 100,000 MiniLM vectors (bench/knowledge.py
# query-latency); these gave 0.99 at about the same query time. Collections keep the
# configuration they were made with, so this reaches new organizations and re-embedded ones.
HNSW_CONFIGURATION: CreateHNSWConfiguration = {
    "space": "cosine",
    "max_neighbors": 32,
    "ef_construction": 200,
    "ef_search": 200,
}


class OrganizationIndex:
    """The collection of one organization. Get it with `current_index()`."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _get(self) -> Collection:
        key = (*_mode(), self.name)
        with _clients_lock:
            collection = _collections.get(key)
        if collection is None:
            collection = client().get_or_create_collection(
                self.name,
                configuration={"hnsw": HNSW_CONFIGURATION},
                embedding_function=None,
            )
            with _clients_lock:
                _collections[key] = collection
        return collection

    def _forget(self) -> None:
        """After a failure: the next call asks for the collection again (it may have been
        dropped, or the server replaced)."""
        with _clients_lock:
            _collections.pop((*_mode(), self.name), None)

    def _run(self, call: Callable[[], T], *, write: bool = False) -> T:
        try:
            with _turn(write=write):
                return _guard(call)
        except StoreUnavailable:
            self._forget()
            raise
        except OSError as exc:  # the embedded index's folder cannot be used
            self._forget()
            raise StoreUnavailable(f"{describe()} cannot be opened ({exc}).") from exc

    def upsert(self, keys: Sequence[str], vectors: np.ndarray, metadatas: Sequence[dict[str, Any]]) -> None:
        if not keys:
            return
        if len(keys) != len(vectors) or len(keys) != len(metadatas):
            raise ValueError("keys, vectors and metadatas differ in length")
        rows = np.asarray(vectors, dtype=np.float32)

        def send() -> None:
            collection = self._get()
            # Chroma caps a request's size; its client says how much one takes.
            step = max(1, min(len(keys), int(client().get_max_batch_size())))
            for begin in range(0, len(keys), step):
                end = begin + step
                collection.upsert(
                    ids=list(keys[begin:end]),
                    embeddings=rows[begin:end],
                    metadatas=[dict(m) for m in metadatas[begin:end]],
                )

        self._run(send, write=True)

    def delete(self, keys: Sequence[str]) -> None:
        if not keys:
            return

        def send() -> None:
            collection = self._get()
            step = max(1, int(client().get_max_batch_size()))
            for begin in range(0, len(keys), step):
                collection.delete(ids=list(keys[begin : begin + step]))

        self._run(send, write=True)

    def delete_source(self, source_id: int) -> None:
        self._run(lambda: self._get().delete(where={"source_id": int(source_id)}), write=True)

    def query(
        self,
        vector: np.ndarray,
        n: int,
        *,
        kinds: Sequence[str] | None = None,
        source_ids: Sequence[int] | None = None,
    ) -> list[IndexHit]:
        """The `n` nearest items (most similar first), within the kinds and sources given."""
        if n < 1:
            return []
        clauses: list[dict[str, Any]] = []
        if kinds:
            clauses.append({"kind": {"$in": [str(kind) for kind in kinds]}})
        if source_ids:
            clauses.append({"source_id": {"$in": [int(source_id) for source_id in source_ids]}})
        where: dict[str, Any] | None = None
        if len(clauses) == 1:
            where = clauses[0]
        elif clauses:
            where = {"$and": clauses}
        query = np.asarray(vector, dtype=np.float32).reshape(1, -1)

        def send() -> Any:
            return self._get().query(
                query_embeddings=query,
                n_results=int(n),
                where=where,
                include=["distances"],
            )

        result = self._run(send)
        ids = (result.get("ids") or [[]])[0]
        distances = (result.get("distances") or [[]])[0]
        return [
            IndexHit(key=str(key), similarity=1.0 - float(distance))
            for key, distance in zip(ids, distances, strict=True)
        ]

    def count(self) -> int:
        return int(self._run(lambda: self._get().count()))

    def keys(self) -> list[str]:
        """Every key in the collection (checks and repairs; not for large collections in a request)."""
        return [str(key) for key in self._run(lambda: self._get().get(include=[])["ids"])]

    def drop(self) -> None:
        """The whole collection gone (the organization is deleted)."""

        def send() -> None:
            self._forget()
            try:
                client().delete_collection(self.name)
            except Exception as exc:
                if "does not exist" not in str(exc):
                    raise

        self._run(send, write=True)


def current_index(embedder: str = "") -> OrganizationIndex:
    """The index of the organization whose schema the database connection is in, for the
    vectors of `embedder` ("" the offline MiniLM; services.search_index() picks the
    organization's own)."""
    return OrganizationIndex(collection_name(_current_schema(), embedder))
