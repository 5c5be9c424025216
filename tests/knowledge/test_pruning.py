"""Pruning by the organization's policy: stale knowledge of a kind goes after its max age,
the least useful goes first when a kind is over its max items, old versions beyond those
kept are dropped, and every run says what it removed (returned, and in the audit log)."""

from datetime import timedelta
from typing import Any

import pytest
from django.db.models.expressions import RawSQL
from django.utils import timezone
from django_tenants.utils import schema_context

from apps.knowledge import pruning, scoring, store, tasks
from apps.knowledge.models import KnowledgeChunk, KnowledgePolicy
from apps.tenancy.models import AuditEvent
from tests.conftest import World
from tests.knowledge.conftest import make_source, put_file

pytestmark = pytest.mark.django_db

NOTES = "\n\n".join(
    f"# Note {number}\n\nFact number {number}: the service {name} listens on port {8000 + number}."
    for number, name in enumerate(["billing", "search", "mailer", "auth", "reports"], start=1)
)


def _age(queryset: Any, days: int) -> None:
    then = timezone.now() - timedelta(days=days)
    queryset.update(created_at=then, last_retrieved_at=None)


def test_stale_knowledge_of_a_kind_goes_after_its_max_age(chroma_mode: str, world: World) -> None:
    with schema_context(world.alpha.schema_name):
        runs = make_source(world, world.alpha, kind="experience", name="experience")
        docs = make_source(world, world.alpha, kind="document", name="notes.md")
        put_file(runs, "runs/1", "The staging deploy needs the VPN.")
        put_file(runs, "runs/2", "The nightly job is flaky on Mondays.")
        put_file(docs, "notes.md", NOTES)
        _age(KnowledgeChunk.objects.all(), days=100)
        # Retrieved last week: recently used, so not stale.
        KnowledgeChunk.objects.filter(path="runs/2").update(
            last_retrieved_at=timezone.now() - timedelta(days=7)
        )
        KnowledgePolicy.objects.create(per_kind={"experience": {"max_age_days": 30}})

        report = pruning.prune(organization=world.alpha)

        assert report["removed"]["experience"] == 1
        assert report["removed"]["document"] == 0
        assert report["reasons"]["age"] == 1
        assert report["total"] == 1
        assert list(KnowledgeChunk.objects.filter(kind="experience").values_list("path", flat=True)) == [
            "runs/2"
        ]
        assert store.current_index().count() == KnowledgeChunk.objects.count()
        runs.refresh_from_db()
        assert runs.chunk_count == 1
        event = AuditEvent.objects.get(organization=world.alpha, action="knowledge.pruned")
        assert event.changes["after"]["removed"]["experience"] == 1


def test_over_max_items_the_least_useful_goes_first(knowledge_index: Any, world: World) -> None:
    with schema_context(world.alpha.schema_name):
        source = make_source(world, world.alpha, kind="document", name="notes.md")
        put_file(source, "notes.md", NOTES)
        chunks = list(KnowledgeChunk.objects.order_by("start_line"))
        assert len(chunks) == 5
        _age(KnowledgeChunk.objects.all(), days=200)
        useful, fresh = chunks[0], chunks[1]
        KnowledgeChunk.objects.filter(pk=useful.pk).update(useful_count=25)
        KnowledgeChunk.objects.filter(pk=fresh.pk).update(last_retrieved_at=timezone.now())
        KnowledgePolicy.objects.create(max_items=2)

        report = pruning.prune(organization=world.alpha)

        assert report["reasons"]["max_items"] == 3
        assert set(KnowledgeChunk.objects.values_list("pk", flat=True)) == {useful.pk, fresh.pk}
        assert sorted(store.current_index().keys()) == sorted([useful.key, fresh.key])


def test_old_versions_beyond_those_kept_are_dropped(knowledge_index: Any, world: World) -> None:
    with schema_context(world.alpha.schema_name):
        source = make_source(world, world.alpha, kind="document", name="status.md")
        for number in range(1, 6):
            put_file(source, "status.md", f"# Status\n\nRelease {number} is the current release.")
        KnowledgePolicy.objects.create(keep_versions=2)

        report = pruning.prune(organization=world.alpha)

        assert report["reasons"]["versions"] == 2
        assert list(KnowledgeChunk.objects.order_by("version").values_list("version", flat=True)) == [3, 4, 5]
        assert KnowledgeChunk.objects.get(superseded_at__isnull=True).version == 5


def test_nothing_to_prune_reports_nothing_and_audits_nothing(knowledge_index: Any, world: World) -> None:
    with schema_context(world.alpha.schema_name):
        put_file(make_source(world, world.alpha), "notes.md", NOTES)
        report = pruning.prune(organization=world.alpha)
        assert report["total"] == 0
        assert not AuditEvent.objects.filter(action="knowledge.pruned").exists()


def test_the_periodic_task_prunes_each_organization_by_its_own_policy(
    knowledge_index: Any, world: World
) -> None:
    for organization in (world.alpha, world.beta):
        with schema_context(organization.schema_name):
            source = make_source(world, organization, kind="experience", name="experience")
            put_file(source, "runs/1", f"{organization.name} deploys on Fridays.")
            _age(KnowledgeChunk.objects.all(), days=60)
    with schema_context(world.alpha.schema_name):
        KnowledgePolicy.objects.create(max_age_days=30)

    result = tasks.prune_task()

    assert result["pruned"]["alpha"]["removed"]["experience"] == 1
    assert "beta" not in result["pruned"]
    with schema_context(world.beta.schema_name):
        assert KnowledgeChunk.objects.count() == 1


def test_the_database_ranks_by_the_same_retention_score(knowledge_index: Any, world: World) -> None:
    with schema_context(world.alpha.schema_name):
        put_file(make_source(world, world.alpha), "notes.md", NOTES)
        now = timezone.now()
        for index, chunk in enumerate(KnowledgeChunk.objects.order_by("id")):
            KnowledgeChunk.objects.filter(pk=chunk.pk).update(
                created_at=now - timedelta(days=40 * index),
                useful_count=index * 3,
                last_retrieved_at=now - timedelta(days=10 * index) if index % 2 else None,
            )
        sql, params = scoring.retention_sql(now)
        for chunk in KnowledgeChunk.objects.annotate(retention=RawSQL(sql, params)):  # noqa: S611
            expected = scoring.retention_score(
                created_at=chunk.created_at,
                last_retrieved_at=chunk.last_retrieved_at,
                useful_count=chunk.useful_count,
                now=now,
            )
            assert chunk.retention == pytest.approx(expected, rel=1e-6)
