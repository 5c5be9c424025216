"""Knowledge reads: sources and the retention policy, in the current organization's schema."""

from __future__ import annotations

from django.db.models import QuerySet

from apps.core.errors import NotFound
from apps.knowledge.models import KnowledgeChunk, KnowledgePolicy, KnowledgeSource


def sources_list() -> QuerySet[KnowledgeSource]:
    return KnowledgeSource.objects.all()


def source_get(*, source_id: int) -> KnowledgeSource:
    source = KnowledgeSource.objects.filter(pk=source_id).first()
    if source is None:
        raise NotFound("No such knowledge source in this organization.")
    return source


def pending_chunks(*, source: KnowledgeSource) -> int:
    """Chunks of the source the index does not have yet (it was unreachable)."""
    return KnowledgeChunk.objects.filter(source=source, indexed_at__isnull=True).count()


def policy_get() -> KnowledgePolicy:
    """The organization's retention policy; the defaults (unsaved) when it has none."""
    return KnowledgePolicy.objects.order_by("pk").first() or KnowledgePolicy()
