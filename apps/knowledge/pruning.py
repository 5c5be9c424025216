"""Forgetting by the organization's retention policy (KnowledgePolicy), and saying what went.

    report = prune(organization=org)     # in the organization's schema
    report["removed"]                    # {"experience": 12, "repository": 0, ...}

In this order, each step on what the previous ones left:
1. age: current chunks unused (not retrieved, and not created) for longer than the
   kind's max_age_days (`per_kind[kind]["max_age_days"]`, else the policy's);
2. max items per kind (`per_kind[kind]["max_items"]`): the lowest retention score first
   (recency x usage, apps/knowledge/scoring.py), so what runs found useful stays;
3. max items over all kinds (`max_items`), the same way;
4. history: superseded versions of each (source, path) beyond the `keep_versions` most
   recent ones.

What is removed leaves the index first, then the database (its source's counts follow),
source by source under the source's lock; the index unreachable: StoreUnavailable and
nothing removed. The summary is returned, logged, and written to the audit log as
`knowledge.pruned` with the counts per kind when something was removed.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import F, QuerySet, Window
from django.db.models.expressions import RawSQL
from django.db.models.functions import Coalesce, DenseRank
from django.utils import timezone

from apps.knowledge import scoring, services
from apps.knowledge.models import KnowledgeChunk, KnowledgePolicy, KnowledgeSource
from apps.knowledge.selectors import policy_get
from apps.tenancy.audit import Actor, audit_record
from apps.tenancy.models import Organization

logger = logging.getLogger(__name__)

KINDS = list(KnowledgeSource.Kind.values)


def _kind_limit(policy: KnowledgePolicy, kind: str, name: str) -> int | None:
    rules = (policy.per_kind or {}).get(kind) or {}
    value = rules.get(name) if isinstance(rules, dict) else None
    return int(value) if isinstance(value, int) and value >= 0 else None


def _current() -> QuerySet[KnowledgeChunk]:
    return KnowledgeChunk.objects.filter(superseded_at__isnull=True)


def _lowest(queryset: QuerySet[KnowledgeChunk], count: int, now: datetime) -> list[int]:
    """Ids of the `count` chunks with the lowest retention score (oldest id first on ties)."""
    if count <= 0:
        return []
    sql, params = scoring.retention_sql(now)
    ranked = queryset.annotate(retention=RawSQL(sql, params)).order_by("retention", "id")  # noqa: S611
    return list(ranked.values_list("id", flat=True)[:count])


def plan(*, policy: KnowledgePolicy, now: datetime) -> dict[str, set[int]]:
    """Ids of the chunks to remove, by reason (each id under its first reason only)."""
    chosen: set[int] = set()
    reasons: dict[str, set[int]] = {"age": set(), "max_items": set(), "versions": set()}

    # 1. Age, per kind.
    last_used = Coalesce("last_retrieved_at", "created_at")
    for kind in KINDS:
        days = _kind_limit(policy, kind, "max_age_days")
        days = policy.max_age_days if days is None else days
        if days <= 0:
            continue
        cutoff = now - timedelta(days=days)
        old = _current().filter(kind=kind).annotate(last_used=last_used).filter(last_used__lt=cutoff)
        reasons["age"].update(old.values_list("id", flat=True))
    chosen |= reasons["age"]

    # 2. Max items per kind, then 3. over all kinds.
    for kind in KINDS:
        limit = _kind_limit(policy, kind, "max_items")
        if limit is None:
            continue
        remaining = _current().filter(kind=kind).exclude(pk__in=chosen)
        excess = remaining.count() - limit
        picked = set(_lowest(remaining, excess, now))
        reasons["max_items"] |= picked
        chosen |= picked
    remaining = _current().exclude(pk__in=chosen)
    excess = remaining.count() - policy.max_items
    picked = set(_lowest(remaining, excess, now))
    reasons["max_items"] |= picked
    chosen |= picked

    # 4. Superseded versions beyond the most recent `keep_versions` of each (source, path).
    ranked = KnowledgeChunk.objects.filter(superseded_at__isnull=False).annotate(
        recent=Window(DenseRank(), partition_by=[F("source_id"), F("path")], order_by=F("version").desc())
    )
    reasons["versions"] = set(ranked.filter(recent__gt=policy.keep_versions).values_list("id", flat=True))
    reasons["versions"] -= chosen
    return reasons


def remove(chunk_ids: Iterable[int]) -> Counter[str]:
    """These chunks gone from the index and the database; counts per kind. Raises
    StoreUnavailable, having removed nothing of the source it was at."""
    by_source: dict[int, list[int]] = defaultdict(list)
    for chunk_id, source_id in KnowledgeChunk.objects.filter(pk__in=list(chunk_ids)).values_list(
        "id", "source_id"
    ):
        by_source[source_id].append(chunk_id)
    removed: Counter[str] = Counter()
    for source_id, ids in sorted(by_source.items()):
        with transaction.atomic():
            source = KnowledgeSource.objects.select_for_update().filter(pk=source_id).first()
            if source is None:
                continue
            rows = list(KnowledgeChunk.objects.filter(pk__in=ids, source=source).values_list("key", "kind"))
            services.index_delete([key for key, _ in rows])
            KnowledgeChunk.objects.filter(pk__in=ids, source=source).delete()
            services.refresh_count(source)
            removed.update(kind for _, kind in rows)
    return removed


def prune(*, organization: Organization, now: datetime | None = None) -> dict[str, Any]:
    """Apply the organization's policy; the summary of what was removed."""
    services.check_organization(organization)
    now = now or timezone.now()
    policy = policy_get()
    reasons = plan(policy=policy, now=now)
    every = set().union(*reasons.values())
    removed = remove(every) if every else Counter()
    summary: dict[str, Any] = {
        "removed": {kind: removed.get(kind, 0) for kind in KINDS},
        "reasons": {reason: len(ids) for reason, ids in reasons.items()},
        "total": sum(removed.values()),
    }
    if summary["total"]:
        logger.info("Knowledge of %s pruned: %s", organization.slug, summary)
        audit_record(
            actor=Actor.system(),
            organization=organization,
            action="knowledge.pruned",
            after=summary,
        )
    return summary
