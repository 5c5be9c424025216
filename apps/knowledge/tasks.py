"""Knowledge work in the worker. Ingestion's tasks are at the end (see there).

Periodic, on Celery beat's schedule (CELERY_BEAT_SCHEDULE), for every active organization
in its own schema. Both are safe to run twice.

- knowledge.prune (every 6 hours): each organization's retention policy applied
  (apps/knowledge/pruning.py); returns, logs and audits what was removed. Then the sweep:
  collections nothing uses any more dropped (of organizations deleted while Chroma was
  down, of embedding models switched away from; services.collections_sweep).
- knowledge.index_pending (every minute): chunks written while the index was unreachable
  sent now (superseded ones removed), under their own keys, so each arrives once; after a
  change of embedding model, every chunk re-embedded this way, and searches moved to the
  new collection once it is complete. Also drops the run sessions of this worker process
  that outlived their TTL.

With the index unreachable, both stop at once with one warning and change nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from django_tenants.utils import schema_context

from apps.knowledge import pruning, services, store
from apps.knowledge.models import KnowledgeChunk
from apps.knowledge.session import sessions_sweep
from apps.tenancy.models import Organization

logger = logging.getLogger(__name__)


def _active_organizations() -> list[Organization]:
    return list(Organization.objects.filter(status=Organization.Status.ACTIVE).order_by("pk"))


def prune_all() -> dict[str, dict[str, Any]]:
    """Each active organization's pruning summary, by slug (those that removed something)."""
    result: dict[str, dict[str, Any]] = {}
    for organization in _active_organizations():
        with schema_context(organization.schema_name):
            try:
                summary = pruning.prune(organization=organization)
            except store.StoreUnavailable as exc:
                logger.warning("Knowledge not pruned: %s", exc.reason)
                return result
        if summary["total"]:
            result[organization.slug] = summary
    return result


def index_pending_all() -> dict[str, dict[str, int]]:
    """Each active organization's pending chunks sent; counts by slug (those that had some)."""
    result: dict[str, dict[str, int]] = {}
    for organization in _active_organizations():
        with schema_context(organization.schema_name):
            pending = KnowledgeChunk.objects.filter(indexed_at__isnull=True).exists()
            if not pending and not services.embedders().reindexing:
                continue
            try:
                counts = services.index_pending()
            except store.StoreUnavailable as exc:
                logger.warning("Pending knowledge not sent: %s", exc.reason)
                return result
        if pending:
            result[organization.slug] = counts
            logger.info("Pending knowledge of %s sent: %s", organization.slug, counts)
    return result


def sweep() -> list[str]:
    """Unused collections dropped (names); Chroma down: none, one warning."""
    try:
        return services.collections_sweep()
    except store.StoreUnavailable as exc:
        logger.warning("Unused knowledge collections not swept: %s", exc.reason)
        return []


@shared_task(name="knowledge.prune")
def prune_task() -> dict[str, Any]:
    return {"pruned": prune_all(), "collections_dropped": sweep()}


@shared_task(name="knowledge.index_pending")
def index_pending_task() -> dict[str, Any]:
    swept = sessions_sweep()
    return {"indexed": index_pending_all(), "sessions": swept}


# --- ingestion (apps/knowledge/ingest.py, apps/knowledge/documents.py) -----------------------------

# A second index of a source waits while one runs: this often, this many times (10 minutes).
INDEX_BUSY_RETRY_SECONDS = 10
INDEX_BUSY_RETRIES = 60


@shared_task(name="knowledge.index_source", bind=True, max_retries=INDEX_BUSY_RETRIES)
def index_source_task(self: Any, source_id: int) -> dict[str, Any]:
    """Index a repository source in the sender's schema (in full the first time, then what
    changed since its last commit). Safe to run twice; while another run of the same source
    goes on, it waits."""
    from dataclasses import asdict

    from apps.knowledge.ingest import repository_index

    outcome = repository_index(source_id=source_id)
    if outcome.status == "busy":
        raise self.retry(countdown=INDEX_BUSY_RETRY_SECONDS)
    return asdict(outcome)


@shared_task(name="knowledge.index_document")
def index_document_task(source_id: int, text: str, kind_label: str) -> str:
    """Store a large uploaded document's chunks in the sender's schema (its text was checked
    and converted at upload). Putting the same text twice changes nothing."""
    from apps.knowledge.documents import document_index

    return document_index(source_id=source_id, text=text, kind_label=kind_label)
