"""Knowledge writes and search: sources, putting a path's chunks, deleting, searching.

    source = source_create(organization=org, kind="repository", name="api", workspace=ws, actor=actor)
    chunks_put(source=source, path="app/models.py", chunks=chunk_file("app/models.py", text), commit=sha)
    search(organization=org, query="where are users created?", k=5)   # -> [Hit]

PostgreSQL is the record, Chroma the index (apps/knowledge/store.py). A chunk row is
written first with `indexed_at` empty, then embedded and sent to the index, and marked
sent. For a superseded chunk `indexed_at` is emptied again until its removal from the
index is done. So `indexed_at IS NULL` always means "the index does not agree with this
row yet"; when Chroma is down the rows wait, the caller gets no error, and the periodic
`knowledge.index_pending` task (apps/knowledge/tasks.py) sends them later under the same
keys, so nothing is duplicated.

All index writes of one source happen under a lock on its row, so two puts (or a put and
the pending task) of the same source never interleave their sends and removals.

The embedding model: the offline MiniLM unless the organization chose an embedding model
of the LLM gateway (`KnowledgePolicy.embedding_model`, set with `policy_update`; the
gateway's credentials, budgets and metering apply to it). Each model has its own
collection (apps/knowledge/store.py), so vectors of two models never meet. Choosing
another model marks every current chunk unsent (`indexed_at` empty): from then on writes
go to the new model's collection and `knowledge.index_pending` re-embeds the rest into it,
while searches keep reading the previous model's complete collection
(`search_embedding_model`). Once no current chunk is left unsent, searches move to the new
collection and the previous one is dropped (or, Chroma being down then, by the sweep in
`knowledge.prune`). So a search never compares vectors of two models, and never sees a
half-filled collection; what is added during the switch is found once it is over.

Runs in the current organization's schema; every function that takes `organization`
refuses one that is not the schema's (a programming error, never a way across tenants).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import numpy as np
from django.db import connection, transaction
from django.db.models import F, Max
from django.utils import timezone

from apps.core.errors import Invalid, NotFound, ServiceError
from apps.knowledge import scoring, store
from apps.knowledge.chunking import Chunk
from apps.knowledge.embeddings import LOCAL_MODEL_NAME, EmbeddingProvider, default_provider, get_provider
from apps.knowledge.models import KnowledgeChunk, KnowledgePolicy, KnowledgeSource
from apps.tenancy.audit import Actor, audit_record
from apps.tenancy.models import Organization

logger = logging.getLogger(__name__)

MAX_QUERY_CHARS: Final = 2000
MAX_K: Final = 50
INDEX_BATCH: Final = 256


@dataclass(frozen=True)
class PutResult:
    added: int
    unchanged: int
    superseded: int

    @property
    def changed(self) -> bool:
        return bool(self.added or self.superseded)


@dataclass(frozen=True)
class Hit:
    """A search result: the chunk, where it comes from, and why it ranks where it does."""

    chunk_id: int
    key: str
    source_id: int
    source_name: str
    kind: str
    path: str
    title: str
    start_line: int | None
    end_line: int | None
    commit: str
    run_id: str
    text: str
    version: int
    created_at: datetime
    similarity: float
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def location(self) -> str:
        """path:start-end (or the title), as the agent and the pages show it."""
        where = self.path or self.title or self.source_name
        if self.start_line is not None:
            end = self.end_line if self.end_line is not None else self.start_line
            where += f":{self.start_line}" if end == self.start_line else f":{self.start_line}-{end}"
        return where


# --- helpers --------------------------------------------------------------------------------------


def check_organization(organization: Organization) -> None:
    """The organization must be the one whose schema is active: knowledge never crosses over."""
    schema = getattr(connection, "schema_name", None)
    if organization.schema_name != schema:
        raise RuntimeError(f"knowledge of {organization.schema_name} used while the schema is {schema}")


def _user_id(actor: Actor) -> int | None:
    return actor.user.pk if actor.user is not None else None


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def chunk_key(source_id: int, path: str, version: int, position: int, digest: str) -> str:
    """Stable for the same source, path, version and position: sending it twice overwrites."""
    token = hashlib.blake2b(f"{path}\0{version}\0{position}\0{digest}".encode(), digest_size=16)
    return f"s{source_id}-{token.hexdigest()}"


# --- the embedding model ------------------------------------------------------------------------


@dataclass(frozen=True)
class Embedders:
    """The organization's embedding models ("" the offline MiniLM)."""

    write: str  # chosen: new vectors are made with it and go to its collection
    search: str  # whose collection is complete: searches read it

    @property
    def reindexing(self) -> bool:
        return self.write != self.search


def embedders() -> Embedders:
    row = KnowledgePolicy.objects.order_by("pk").values("embedding_model", "search_embedding_model").first()
    if row is None:
        return Embedders(write="", search="")
    return Embedders(write=row["embedding_model"], search=row["search_embedding_model"])


def _schema() -> str:
    return str(getattr(connection, "schema_name", ""))


def _organization_id() -> int:
    """The current schema's organization (the gateway bills and budgets by it)."""
    tenant = getattr(connection, "tenant", None)
    schema = _schema()
    if isinstance(tenant, Organization) and tenant.pk and tenant.schema_name == schema:
        return int(tenant.pk)
    found = Organization.objects.filter(schema_name=schema).values_list("pk", flat=True).first()
    if found is None:
        raise RuntimeError(f"no organization has the schema {schema}")
    return int(found)


def provider_for(model: str) -> EmbeddingProvider:
    """The provider of an embedding model for the current organization."""
    if not model:
        return default_provider()
    return get_provider("gateway", model=model, organization_id=_organization_id())


def embed_with(model: str, texts: Sequence[str]) -> np.ndarray:
    """Vectors of `model`; the model failing (a gateway model refused, over budget, down):
    StoreUnavailable with the reason, as the index itself being down."""
    try:
        return np.asarray(provider_for(model).embed(list(texts)), dtype=np.float32)
    except ServiceError as exc:
        if isinstance(exc, store.StoreUnavailable):
            raise
        raise store.StoreUnavailable(f"The embedding model {model!r} failed: {exc.message}") from exc


def embedder() -> EmbeddingProvider:
    """The provider whose vectors the organization's searches compare."""
    return provider_for(embedders().search)


def embed(texts: Sequence[str]) -> np.ndarray:
    """Vectors comparable with the organization's search index (`search_index()`)."""
    return embed_with(embedders().search, texts)


def search_index(state: Embedders | None = None) -> store.OrganizationIndex:
    """The collection searches read: the search model's."""
    return store.current_index((state or embedders()).search)


def write_indexes(state: Embedders | None = None) -> list[store.OrganizationIndex]:
    """Where removals go: the chosen model's collection, and during a switch the one
    searches still read."""
    state = state or embedders()
    indexes = [store.current_index(state.write)]
    if state.reindexing:
        indexes.append(store.current_index(state.search))
    return indexes


def index_delete(keys: Sequence[str]) -> None:
    for index in write_indexes():
        index.delete(keys)


def embedding_text(chunk: KnowledgeChunk) -> str:
    return chunk.text


def index_metadata(chunk: KnowledgeChunk) -> dict[str, Any]:
    return {"kind": chunk.kind, "source_id": chunk.source_id}


def _lock_source(source: KnowledgeSource) -> KnowledgeSource:
    locked = KnowledgeSource.objects.select_for_update().filter(pk=source.pk).first()
    if locked is None:
        raise NotFound("No such knowledge source; it may have been deleted.")
    return locked


def refresh_count(source: KnowledgeSource) -> None:
    source.chunk_count = KnowledgeChunk.objects.filter(source=source, superseded_at__isnull=True).count()
    KnowledgeSource.objects.filter(pk=source.pk).update(
        chunk_count=source.chunk_count, updated_at=timezone.now()
    )


def sync_index(chunks: Sequence[KnowledgeChunk]) -> int:
    """Make the index agree with these rows: current ones embedded and upserted, superseded
    ones removed; each marked `indexed_at`. Raises StoreUnavailable with nothing marked.
    Call it holding the lock of the chunks' source."""
    sent = 0
    state = embedders()
    index = store.current_index(state.write)
    removals = write_indexes(state)
    for begin in range(0, len(chunks), INDEX_BATCH):
        batch = chunks[begin : begin + INDEX_BATCH]
        current = [chunk for chunk in batch if chunk.superseded_at is None]
        gone = [chunk for chunk in batch if chunk.superseded_at is not None]
        if current:
            vectors = embed_with(state.write, [embedding_text(chunk) for chunk in current])
            index.upsert(
                [chunk.key for chunk in current], vectors, [index_metadata(chunk) for chunk in current]
            )
        if gone:
            for target in removals:
                target.delete([chunk.key for chunk in gone])
        now = timezone.now()
        # Only rows whose state is still the one sent (a concurrent change empties it again).
        KnowledgeChunk.objects.filter(pk__in=[c.pk for c in current], superseded_at__isnull=True).update(
            indexed_at=now
        )
        KnowledgeChunk.objects.filter(pk__in=[c.pk for c in gone], superseded_at__isnull=False).update(
            indexed_at=now
        )
        sent += len(batch)
    return sent


def _sync_or_leave_pending(chunks: Sequence[KnowledgeChunk]) -> bool:
    """True if sent; False if the index is unavailable (the rows stay pending)."""
    if not chunks:
        return True
    try:
        sync_index(chunks)
    except store.StoreUnavailable as exc:
        logger.warning("Knowledge index: %d chunks left pending: %s", len(chunks), exc.reason)
        return False
    return True


# --- sources --------------------------------------------------------------------------------------


@transaction.atomic
def source_create(
    *,
    organization: Organization,
    kind: str,
    name: str,
    workspace: Any = None,
    uri: str = "",
    media_type: str = "",
    run_id: str = "",
    actor: Actor,
) -> KnowledgeSource:
    check_organization(organization)
    if kind not in KnowledgeSource.Kind.values:
        raise Invalid(
            f"Unknown kind of source {kind!r}; one of: {', '.join(KnowledgeSource.Kind.values)}.",
            field="kind",
        )
    name = (name or "").strip()
    if not name:
        raise Invalid("Give the source a name.", field="name")
    if len(name) > 200:
        raise Invalid("A source's name has at most 200 characters.", field="name")
    if len(uri) > 500:
        raise Invalid("A source's URI has at most 500 characters.", field="uri")
    source = KnowledgeSource.objects.create(
        kind=kind,
        name=name,
        workspace=workspace,
        uri=uri,
        media_type=media_type[:100],
        run_id=run_id[:64],
        created_by_id=_user_id(actor),
    )
    audit_record(
        actor=actor,
        organization=organization,
        action="knowledge.source_created",
        target=source,
        after={"kind": kind, "name": name, "uri": uri, "workspace": workspace.pk if workspace else None},
    )
    return source


def source_delete(*, organization: Organization, source: KnowledgeSource, actor: Actor) -> int:
    """Everything of the source gone from the index and the database; how many chunks
    (every version) were deleted. The index unreachable: StoreUnavailable (503), nothing changed."""
    check_organization(organization)
    with transaction.atomic():
        locked = _lock_source(source)
        for index in write_indexes():
            index.delete_source(locked.pk)
        chunks = KnowledgeChunk.objects.filter(source=locked)
        total = chunks.count()
        current = chunks.filter(superseded_at__isnull=True).count()
        summary = {"kind": locked.kind, "name": locked.name, "chunks": current, "versions": total}
        chunks.delete()
        audit_record(
            actor=actor,
            organization=organization,
            action="knowledge.source_deleted",
            target=locked,
            before=summary,
        )
        locked.delete()
    return total


# --- chunks ---------------------------------------------------------------------------------------


def _signature(
    text: str, title: str, start: int | None, end: int | None
) -> tuple[str, str, int | None, int | None]:
    return (content_hash(text), title, start, end)


def _clean_path(path: str) -> str:
    path = (path or "").strip()
    if len(path) > 500:
        raise Invalid("A path has at most 500 characters.", field="path")
    return path


def _extra_metadata(chunk: Chunk) -> dict[str, Any]:
    """What the chunker said of the chunk beyond its columns (plain values only)."""
    plain: dict[str, Any] = {"chunk_kind": chunk.kind}
    for name, value in chunk.metadata.items():
        if isinstance(value, str | int | float | bool) or value is None:
            plain[str(name)] = value
    return plain


def chunks_put(
    *,
    source: KnowledgeSource,
    path: str,
    chunks: Sequence[Chunk],
    commit: str = "",
    run_id: str = "",
) -> PutResult:
    """Make `chunks` the current chunks of (source, path).

    A chunk equal to a current one (same text, title and lines) stays as it is; current
    ones not in `chunks` are superseded (kept for the history); the others are added with
    the path's next version. Putting the same chunks again changes nothing. Chroma down:
    the rows are written and wait for the index (no error)."""
    path = _clean_path(path)
    commit = (commit or "")[:64]
    wanted = [chunk for chunk in chunks if chunk.text and chunk.text.strip()]
    with transaction.atomic():
        locked = _lock_source(source)
        current = list(
            KnowledgeChunk.objects.filter(source=locked, path=path, superseded_at__isnull=True).order_by("id")
        )
        available = Counter(_signature(c.text, c.title, c.start_line, c.end_line) for c in current)
        kept: Counter[tuple[str, str, int | None, int | None]] = Counter()
        new: list[tuple[int, Chunk, str]] = []
        for position, chunk in enumerate(wanted):
            title = (chunk.title or "")[:300]
            signature = _signature(chunk.text, title, chunk.start_line, chunk.end_line)
            if kept[signature] < available[signature]:
                kept[signature] += 1
            else:
                new.append((position, chunk, signature[0]))
        to_supersede: list[KnowledgeChunk] = []
        remaining = Counter(kept)
        for row in current:
            signature = _signature(row.text, row.title, row.start_line, row.end_line)
            if remaining[signature] > 0:
                remaining[signature] -= 1
            else:
                to_supersede.append(row)
        unchanged = len(current) - len(to_supersede)
        if not new and not to_supersede:
            return PutResult(added=0, unchanged=unchanged, superseded=0)
        now = timezone.now()
        if to_supersede:
            KnowledgeChunk.objects.filter(pk__in=[row.pk for row in to_supersede]).update(
                superseded_at=now, indexed_at=None
            )
            for row in to_supersede:
                row.superseded_at, row.indexed_at = now, None
        added: list[KnowledgeChunk] = []
        if new:
            last = KnowledgeChunk.objects.filter(source=locked, path=path).aggregate(v=Max("version"))["v"]
            version = (last or 0) + 1
            added = KnowledgeChunk.objects.bulk_create(
                [
                    KnowledgeChunk(
                        key=chunk_key(locked.pk, path, version, position, digest),
                        source=locked,
                        kind=locked.kind,
                        path=path,
                        title=(chunk.title or "")[:300],
                        start_line=chunk.start_line,
                        end_line=chunk.end_line,
                        commit=commit or (chunk.commit or "")[:64],
                        run_id=(run_id or locked.run_id)[:64],
                        text=chunk.text,
                        content_hash=digest,
                        version=version,
                        metadata={**_extra_metadata(chunk), "position": position},
                    )
                    for position, chunk, digest in new
                ]
            )
        refresh_count(locked)
        _sync_or_leave_pending([*added, *to_supersede])
    return PutResult(added=len(added), unchanged=unchanged, superseded=len(to_supersede))


def path_delete(*, source: KnowledgeSource, path: str) -> int:
    """A file removed from the repository: its current chunks superseded (kept for the
    history) and removed from the index; how many."""
    path = _clean_path(path)
    with transaction.atomic():
        locked = _lock_source(source)
        rows = list(KnowledgeChunk.objects.filter(source=locked, path=path, superseded_at__isnull=True))
        if not rows:
            return 0
        now = timezone.now()
        KnowledgeChunk.objects.filter(pk__in=[row.pk for row in rows]).update(
            superseded_at=now, indexed_at=None
        )
        for row in rows:
            row.superseded_at, row.indexed_at = now, None
        refresh_count(locked)
        _sync_or_leave_pending(rows)
    return len(rows)


def index_pending(*, limit: int = 5000) -> dict[str, int]:
    """Send what the index does not have yet (it was down): current chunks upserted,
    superseded ones removed, source by source under its lock (a source being written is
    left for the next round). Raises StoreUnavailable when the index is still down."""
    pending_sources = list(
        KnowledgeChunk.objects.filter(indexed_at__isnull=True).values_list("source_id", flat=True).distinct()
    )
    sent = removed = 0
    for source_id in pending_sources:
        if sent + removed >= limit:
            break
        with transaction.atomic():
            locked = KnowledgeSource.objects.select_for_update(skip_locked=True).filter(pk=source_id).first()
            if locked is None:
                continue
            rows = list(
                KnowledgeChunk.objects.filter(source=locked, indexed_at__isnull=True).order_by("id")[
                    : limit - sent - removed
                ]
            )
            sync_index(rows)
            removed += sum(1 for row in rows if row.superseded_at is not None)
            sent += sum(1 for row in rows if row.superseded_at is None)
    if embedders().reindexing:
        reindex_finish()
    return {"sent": sent, "removed": removed}


def reindex_finish() -> bool:
    """After a change of embedding model: once every current chunk is in the chosen model's
    collection, searches move to it and the previous collection is dropped. True if it did."""
    with transaction.atomic():
        policy = KnowledgePolicy.objects.select_for_update().order_by("pk").first()
        if policy is None or not policy.reindexing:
            return False
        if KnowledgeChunk.objects.filter(superseded_at__isnull=True, indexed_at__isnull=True).exists():
            return False
        previous = policy.search_embedding_model
        policy.search_embedding_model = policy.embedding_model
        policy.save(update_fields=["search_embedding_model", "updated_at"])
    logger.info(
        "Knowledge of %s re-indexed with %s; searches use it now",
        _schema(),
        policy.embedding_model or "the local model",
    )
    _collection_drop_quietly(previous)
    return True


def _collection_drop_quietly(embedder: str, *, schema: str | None = None) -> None:
    """A collection no longer used, gone; Chroma down: left for the sweep (knowledge.prune)."""
    name = store.collection_name(schema or _schema(), embedder)
    try:
        store.collection_drop(name)
    except store.StoreUnavailable as exc:
        logger.warning("The unused knowledge collection %s stays until the next sweep: %s", name, exc.reason)


# --- collections across organizations (public schema) ---------------------------------------------


def organization_collections_drop(*, schema_name: str) -> list[str]:
    """A deleted organization's collections (every model's) gone from the index; their
    names. Chroma down: nothing raised, the sweep (`collections_sweep`) drops them later."""
    try:
        names = [name for name in store.collection_names() if store.collection_schema(name) == schema_name]
        for name in names:
            store.collection_drop(name)
    except store.StoreUnavailable as exc:
        logger.warning(
            "The knowledge index of the deleted schema %s stays until the next sweep: %s",
            schema_name,
            exc.reason,
        )
        return []
    return names


def collections_sweep() -> list[str]:
    """Collections nothing uses any more dropped: those of schemas that no longer exist (an
    organization deleted while Chroma was down) and those of models an organization
    switched away from. Their names; StoreUnavailable when Chroma is down."""
    from django_tenants.utils import schema_context, schema_exists

    by_schema: dict[str, list[str]] = {}
    for name in store.collection_names():
        by_schema.setdefault(str(store.collection_schema(name)), []).append(name)
    organizations = set(Organization.objects.values_list("schema_name", flat=True))
    dropped: list[str] = []
    for schema, names in sorted(by_schema.items()):
        if schema not in organizations:
            if schema_exists(schema):
                continue  # not an organization's (nor ever ours to touch)
            for name in names:
                store.collection_drop(name)
                dropped.append(name)
            continue
        if not schema_exists(schema):
            continue  # an organization still being set up
        with schema_context(schema), transaction.atomic():
            # Locked as policy_update locks it: the models read here stay the ones in use.
            KnowledgePolicy.objects.select_for_update().order_by("pk").first()
            state = embedders()
            live = {store.collection_name(schema, state.write), store.collection_name(schema, state.search)}
            for name in names:
                if name not in live:
                    store.collection_drop(name)
                    dropped.append(name)
    if dropped:
        logger.info("Unused knowledge collections dropped: %s", ", ".join(dropped))
    return dropped


# --- search ---------------------------------------------------------------------------------------


def clean_query(query: str) -> str:
    query = (query or "").strip()
    if not query:
        raise Invalid("Type something to search for; the query is empty.", code="empty_query", field="q")
    if len(query) > MAX_QUERY_CHARS:
        raise Invalid(f"A query has at most {MAX_QUERY_CHARS:,} characters.", field="q")
    return query


def clean_k(k: int) -> int:
    if not 1 <= k <= MAX_K:
        raise Invalid(f"Ask for 1 to {MAX_K} results.", field="k")
    return k


def clean_kinds(kinds: Iterable[str] | None) -> list[str] | None:
    if not kinds:
        return None
    chosen = [str(kind) for kind in kinds]
    unknown = [kind for kind in chosen if kind not in KnowledgeSource.Kind.values]
    if unknown:
        raise Invalid(
            f"Unknown kind {unknown[0]!r}; one of: {', '.join(KnowledgeSource.Kind.values)}.", field="kind"
        )
    return chosen


def search_vector(
    *,
    vector: np.ndarray,
    k: int = 10,
    kinds: Iterable[str] | None = None,
    source_ids: Iterable[int] | None = None,
    record: bool = True,
    min_similarity: float = 0.0,
    embedder: str | None = None,
) -> list[Hit]:
    """The k best current chunks for a query vector, by score (apps/knowledge/scoring.py).
    The vector is of `embedder`'s model (None: the organization's search model, `embed`'s)."""
    chosen_kinds = clean_kinds(kinds)
    chosen_sources = [int(source_id) for source_id in source_ids] if source_ids else None
    index = search_index() if embedder is None else store.current_index(embedder)
    candidates = index.query(vector, scoring.candidates(k), kinds=chosen_kinds, source_ids=chosen_sources)
    if not candidates:
        return []
    similarity = {hit.key: hit.similarity for hit in candidates}
    rows = KnowledgeChunk.objects.filter(key__in=list(similarity), superseded_at__isnull=True).select_related(
        "source"
    )
    if chosen_kinds:  # the index's metadata is a copy; the record decides
        rows = rows.filter(kind__in=chosen_kinds)
    if chosen_sources:
        rows = rows.filter(source_id__in=chosen_sources)
    now = timezone.now()
    hits = []
    for row in rows:
        if similarity[row.key] < min_similarity:
            continue
        hits.append(
            Hit(
                chunk_id=row.pk,
                key=row.key,
                source_id=row.source_id,
                source_name=row.source.name,
                kind=row.kind,
                path=row.path,
                title=row.title,
                start_line=row.start_line,
                end_line=row.end_line,
                commit=row.commit,
                run_id=row.run_id,
                text=row.text,
                version=row.version,
                created_at=row.created_at,
                similarity=similarity[row.key],
                score=scoring.score(
                    similarity=similarity[row.key],
                    created_at=row.created_at,
                    last_retrieved_at=row.last_retrieved_at,
                    useful_count=row.useful_count,
                    now=now,
                ),
                metadata=row.metadata,
            )
        )
    hits.sort(key=lambda hit: (-hit.score, -hit.similarity, hit.chunk_id))
    hits = hits[:k]
    if record and hits:
        retrievals_record([hit.chunk_id for hit in hits], now=now)
    return hits


def retrievals_record(chunk_ids: Sequence[int], *, now: datetime | None = None) -> int:
    """One UPDATE: these chunks were retrieved now."""
    return KnowledgeChunk.objects.filter(pk__in=list(chunk_ids)).update(
        retrieved_count=F("retrieved_count") + 1, last_retrieved_at=now or timezone.now()
    )


def search(
    *,
    organization: Organization,
    query: str,
    k: int = 10,
    kinds: Iterable[str] | None = None,
    source_ids: Iterable[int] | None = None,
    record: bool = True,
) -> list[Hit]:
    """The k most relevant current chunks of the organization for `query`: similarity from
    the index, re-ranked by recency and usage. Empty query: Invalid (400); the index
    unreachable: StoreUnavailable (503)."""
    check_organization(organization)
    query = clean_query(query)
    k = clean_k(int(k))
    model = embedders().search
    vector = embed_with(model, [query])[0]
    return search_vector(
        vector=vector, k=k, kinds=kinds, source_ids=source_ids, record=record, embedder=model
    )


def store_available() -> str | None:
    """None if the index answers, else the reason (for a 503)."""
    return store.ping()


# --- retention policy -----------------------------------------------------------------------------

POLICY_LIMITS: Final = {"max_items": (1, 10_000_000), "max_age_days": (0, 36_500), "keep_versions": (0, 1000)}
PER_KIND_LIMITS: Final = {"max_items": (0, 10_000_000), "max_age_days": (0, 36_500)}


def _check_number(value: Any, *, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise Invalid(f"{field} is a whole number from {low:,} to {high:,}.", field=field)
    return int(value)


def clean_per_kind(per_kind: Any) -> dict[str, dict[str, int]]:
    """{"experience": {"max_items": 5000, "max_age_days": 90}, ...}: known kinds and rules only."""
    if per_kind is None:
        return {}
    if not isinstance(per_kind, dict):
        raise Invalid("per_kind maps a kind of source to its rules.", field="per_kind")
    cleaned: dict[str, dict[str, int]] = {}
    for kind, rules in per_kind.items():
        if kind not in KnowledgeSource.Kind.values:
            raise Invalid(
                f"Unknown kind {kind!r} in per_kind; one of: {', '.join(KnowledgeSource.Kind.values)}.",
                field="per_kind",
            )
        if not isinstance(rules, dict):
            raise Invalid(f"per_kind.{kind} is an object of max_items and max_age_days.", field="per_kind")
        unknown = sorted(set(rules) - set(PER_KIND_LIMITS))
        if unknown:
            raise Invalid(
                f"per_kind.{kind} has an unknown rule {unknown[0]!r}; rules: max_items, max_age_days.",
                field="per_kind",
            )
        cleaned[kind] = {
            name: _check_number(value, field=f"per_kind.{kind}.{name}", low=low, high=high)
            for name, value in rules.items()
            for low, high in [PER_KIND_LIMITS[name]]
        }
    return cleaned


def clean_embedding_model(*, organization: Organization, model: Any) -> str:
    """ "" (the offline MiniLM), or the catalog name of a gateway embedding model the
    organization may use: enabled for it, with credentials. Else Invalid (400) naming it."""
    if not isinstance(model, str):
        raise Invalid(
            "embedding_model is a model's name, or empty for the local model.", field="embedding_model"
        )
    model = model.strip()
    if not model:
        return ""
    from apps.llm import selectors as llm_selectors
    from apps.llm.gateway import gateway

    router = gateway().router
    try:
        info = router.lookup_embedding(llm_selectors.catalog_models(), model)
        router.check_usable(
            info, llm_selectors.organization_config(organization_id=organization.pk, fresh=True)
        )
    except ServiceError as exc:
        raise Invalid(
            f"{exc.message} Empty: the local model ({LOCAL_MODEL_NAME}).",
            code=exc.code,
            field="embedding_model",
        ) from None
    return info.name


def _embedding_model_change(policy: KnowledgePolicy, model: str) -> str | None:
    """The organization's knowledge moves to `model` (see the module's docstring); the
    collection to drop once this commits, if one is left unused."""
    # Every source locked, in order: a write of any of them in flight ends first, and the next
    # ones see the new model, so no chunk is marked sent into the collection being left.
    list(KnowledgeSource.objects.select_for_update().order_by("pk").values_list("pk", flat=True))
    previous_write, search = policy.embedding_model, policy.search_embedding_model
    policy.embedding_model = model
    current = KnowledgeChunk.objects.filter(superseded_at__isnull=True)
    if not current.exists():
        policy.search_embedding_model = model  # nothing to embed again: at once
    else:
        # Even back to the search model: what was added meanwhile is only in the one left.
        current.update(indexed_at=None)
    unused = {previous_write, search} - {policy.embedding_model, policy.search_embedding_model}
    return unused.pop() if unused else None


@transaction.atomic
def policy_update(
    *,
    organization: Organization,
    actor: Actor,
    max_items: int,
    max_age_days: int,
    keep_versions: int,
    per_kind: Any = None,
    embedding_model: str | None = None,
) -> KnowledgePolicy:
    """The organization's knowledge policy replaced (audited): retention, which pruning
    applies next time, and the embedding model (None: unchanged; a change re-indexes,
    see the module's docstring)."""
    check_organization(organization)
    values = {
        "max_items": max_items,
        "max_age_days": max_age_days,
        "keep_versions": keep_versions,
    }
    for name, value in values.items():
        low, high = POLICY_LIMITS[name]
        _check_number(value, field=name, low=low, high=high)
    cleaned = clean_per_kind(per_kind)
    model = (
        None
        if embedding_model is None
        else clean_embedding_model(organization=organization, model=embedding_model)
    )
    policy = KnowledgePolicy.objects.select_for_update().order_by("pk").first() or KnowledgePolicy()
    fields = ["max_items", "max_age_days", "keep_versions", "per_kind", "embedding_model"]
    before = {name: getattr(policy, name) for name in fields} if policy.pk else None
    for name, value in values.items():
        setattr(policy, name, value)
    policy.per_kind = cleaned
    unused = None
    if model is not None and model != policy.embedding_model:
        unused = _embedding_model_change(policy, model)
    policy.save()
    audit_record(
        actor=actor,
        organization=organization,
        action="knowledge.policy_updated",
        target=policy,
        before=before,
        after={name: getattr(policy, name) for name in fields},
    )
    if unused is not None:
        schema = organization.schema_name
        transaction.on_commit(lambda: _collection_drop_quietly(unused, schema=schema))
    return policy
