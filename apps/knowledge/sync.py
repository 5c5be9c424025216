"""Between a run's session memory and the organization's knowledge, both ways.

- `preload(organization, run_id, task_text, k)` at a run's start: the global knowledge
  most relevant to the task copied into the run's session (as snippets), so the agent's
  first searches are local.
- `distil(organization, run_id, outcome, summary)` at its end: what the session marked
  worth keeping (notes, kept observations) and the outcome become "experience" chunks
  with the run as provenance, in the organization's experience source:
  - an item whose vector is within EXPERIENCE_DUPLICATE (cosine >= 0.95) of existing
    experience is not added again; that experience's useful_count goes up instead;
  - an item with a key (`metadata["key"]`, e.g. "how-to-run-tests") is put under that
    key, so a later run's item with the same key supersedes the older version, which is
    kept as history; items without one are put under the run's own path;
  - usage feedback: if the run succeeded, every global chunk it retrieved (preloaded or
    searched) gets useful_count + 1.
  Idempotent: a KnowledgeRunSync row records the run, and distilling it again returns
  what was done the first time and changes nothing.

The index being down never stops a run: preload then gives nothing, and distil falls
back to exact duplicates only and leaves its chunks for `knowledge.index_pending`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Final

import numpy as np
from django.db import IntegrityError, transaction
from django.db.models import F

from apps.core.errors import Invalid
from apps.knowledge import services, store
from apps.knowledge.chunking import Chunk
from apps.knowledge.models import KnowledgeChunk, KnowledgeRunSync, KnowledgeSource
from apps.knowledge.session import SNIPPET, SessionItem, session_find, session_for
from apps.tenancy.audit import Actor
from apps.tenancy.models import Organization

logger = logging.getLogger(__name__)

EXPERIENCE_SOURCE_NAME: Final = "Run experience"
EXPERIENCE_DUPLICATE: Final = 0.95
SUCCEEDED: Final = "succeeded"
MAX_SUMMARY_CHARS: Final = 4000
MAX_KEY_CHARS: Final = 200


@dataclass(frozen=True)
class DistilResult:
    run_id: str
    outcome: str
    added: int = 0  # experience chunks written
    superseded: int = 0  # older versions of the same keys
    duplicates: int = 0  # near-duplicates of existing experience, not added (usage bumped)
    credited: int = 0  # retrieved chunks credited as useful (a succeeded run)
    already: bool = False  # the run had been distilled before: nothing changed now

    def as_dict(self) -> dict[str, int]:
        """The counts, as recorded on the run's KnowledgeRunSync."""
        return {key: value for key, value in asdict(self).items() if key in COUNTS}

    @classmethod
    def recorded(cls, record: KnowledgeRunSync) -> DistilResult:
        counts = {key: int(value) for key, value in (record.result or {}).items() if key in COUNTS}
        return cls(run_id=record.run_id, outcome=record.outcome, already=True, **counts)


COUNTS: Final = frozenset({"added", "superseded", "duplicates", "credited"})


def preload(*, organization: Organization, run_id: str, task_text: str, k: int = 5) -> list[services.Hit]:
    """The organization's knowledge most relevant to the task, copied into the run's session."""
    services.check_organization(organization)
    text = (task_text or "").strip()[: services.MAX_QUERY_CHARS]
    if not text:
        return []
    try:
        hits = services.search(organization=organization, query=text, k=max(1, min(k, services.MAX_K)))
    except store.StoreUnavailable as exc:
        logger.warning("Run %s starts without preloaded knowledge: %s", run_id, exc.reason)
        return []
    memory = session_for(run_id)
    for hit in hits:
        memory.add(
            hit.text,
            kind=SNIPPET,
            metadata=provenance(hit),
            chunk_key=hit.key,
        )
    return hits


def provenance(hit: services.Hit) -> dict[str, Any]:
    return {
        "source": hit.source_name,
        "source_id": hit.source_id,
        "kind": hit.kind,
        "path": hit.path,
        "title": hit.title,
        "location": hit.location,
        "chunk_key": hit.key,
    }


def experience_source(organization: Organization) -> KnowledgeSource:
    """The organization's one experience source, made on first use."""
    source = (
        KnowledgeSource.objects.filter(kind=KnowledgeSource.Kind.EXPERIENCE, name=EXPERIENCE_SOURCE_NAME)
        .order_by("pk")
        .first()
    )
    if source is None:
        source = services.source_create(
            organization=organization,
            kind=KnowledgeSource.Kind.EXPERIENCE,
            name=EXPERIENCE_SOURCE_NAME,
            actor=Actor.system(),
        )
        KnowledgeSource.objects.filter(pk=source.pk).update(status=KnowledgeSource.Status.READY)
    return source


def _slug(value: str) -> str:
    cleaned = "".join(char if char.isalnum() or char in "-_." else "-" for char in value.strip().lower())
    return "-".join(part for part in cleaned.split("-") if part)[:MAX_KEY_CHARS] or "item"


def _path(run_id: str, item: SessionItem) -> str:
    key = str(item.metadata.get("key") or "").strip()
    if key:
        return f"experience/{_slug(key)}"
    return f"runs/{run_id}/{item.kind}-{item.id}"


def _title(item: SessionItem) -> str:
    title = str(item.metadata.get("title") or "").strip()
    return (title or item.text.strip().splitlines()[0])[:300]


def _as_chunk(*, run_id: str, path: str, title: str, text: str, kind: str) -> Chunk:
    lines = text.count("\n") + 1
    return Chunk(
        text=text,
        source=f"run:{run_id}",
        path=path,
        title=title,
        start_line=1,
        end_line=lines,
        kind="text",
        metadata={"experience": kind},
    )


@dataclass
class _Candidate:
    path: str
    chunk: Chunk
    vector: np.ndarray


def _candidates(run_id: str, outcome: str, summary: str, items: list[SessionItem]) -> list[_Candidate]:
    candidates = []
    texts = [item.text for item in items]
    if summary:
        texts.append(f"Run {run_id} {outcome}: {summary}")
    if not texts:
        return []
    vectors = services.embed(texts)
    for item, vector in zip(items, vectors, strict=False):
        path = _path(run_id, item)
        chunk = _as_chunk(run_id=run_id, path=path, title=_title(item), text=item.text, kind=item.kind)
        candidates.append(_Candidate(path=path, chunk=chunk, vector=vector))
    if summary:
        path = f"runs/{run_id}/outcome"
        chunk = _as_chunk(
            run_id=run_id, path=path, title=f"Run {run_id}: {outcome}", text=texts[-1], kind="outcome"
        )
        candidates.append(_Candidate(path=path, chunk=chunk, vector=vectors[-1]))
    return candidates


def _near_duplicate(source: KnowledgeSource, candidate: _Candidate) -> KnowledgeChunk | None:
    """Existing current experience (of another path) this candidate nearly repeats."""
    digest = services.content_hash(candidate.chunk.text)
    exact = (
        KnowledgeChunk.objects.filter(source=source, content_hash=digest, superseded_at__isnull=True)
        .exclude(path=candidate.path)
        .first()
    )
    if exact is not None:
        return exact
    try:
        hits = services.search_index().query(candidate.vector, 5, source_ids=[source.pk])
    except store.StoreUnavailable:
        return None  # exact duplicates only until the index is back
    close = [hit.key for hit in hits if hit.similarity >= EXPERIENCE_DUPLICATE]
    if not close:
        return None
    return (
        KnowledgeChunk.objects.filter(key__in=close, superseded_at__isnull=True)
        .exclude(path=candidate.path)
        .first()
    )


def distil(*, organization: Organization, run_id: str, outcome: str, summary: str = "") -> DistilResult:
    """The run's session distilled into the organization's experience (see the module doc).
    Distilling the same run again changes nothing and returns the first result."""
    services.check_organization(organization)
    run_id = str(run_id or "").strip()
    if not run_id or len(run_id) > 64:
        raise Invalid("A run id has 1 to 64 characters.", field="run_id")
    outcome = (outcome or "").strip().lower()[:32] or "unknown"
    summary = (summary or "").strip()[:MAX_SUMMARY_CHARS]
    done = KnowledgeRunSync.objects.filter(run_id=run_id).first()
    if done is not None:
        return DistilResult.recorded(done)

    memory = session_find(run_id)
    items = memory.kept_items() if memory is not None else []
    retrieved = sorted(memory.retrieved_keys) if memory is not None else []
    candidates = _candidates(run_id, outcome, summary, items)
    try:
        with transaction.atomic():
            record = KnowledgeRunSync.objects.create(run_id=run_id, outcome=outcome)
            result = _write(organization, run_id, outcome, candidates, retrieved)
            record.result = result.as_dict()
            record.save(update_fields=["result"])
    except IntegrityError:  # distilled at the same time by another process: its result stands
        done = KnowledgeRunSync.objects.get(run_id=run_id)
        return DistilResult.recorded(done)
    logger.info("Run %s distilled: %s", run_id, result.as_dict())
    return result


def _write(
    organization: Organization,
    run_id: str,
    outcome: str,
    candidates: list[_Candidate],
    retrieved: list[str],
) -> DistilResult:
    source = experience_source(organization)
    added = superseded = duplicates = 0
    accepted: list[np.ndarray] = []
    bumped: list[int] = []
    for candidate in candidates:
        # Near-duplicates within this run: the first one stands.
        if any(float(vector @ candidate.vector) >= EXPERIENCE_DUPLICATE for vector in accepted):
            duplicates += 1
            continue
        existing = _near_duplicate(source, candidate)
        if existing is not None:
            duplicates += 1
            bumped.append(existing.pk)
            continue
        put = services.chunks_put(source=source, path=candidate.path, chunks=[candidate.chunk], run_id=run_id)
        added += put.added
        superseded += put.superseded
        accepted.append(candidate.vector)
    if bumped:
        KnowledgeChunk.objects.filter(pk__in=bumped).update(useful_count=F("useful_count") + 1)
    credited = 0
    if outcome == SUCCEEDED and retrieved:
        credited = KnowledgeChunk.objects.filter(key__in=retrieved).update(useful_count=F("useful_count") + 1)
    return DistilResult(
        run_id=run_id,
        outcome=outcome,
        added=added,
        superseded=superseded,
        duplicates=duplicates,
        credited=credited,
    )
