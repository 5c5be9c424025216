"""Putting, searching and deleting knowledge through the services, on both index modes:
putting a file again changes nothing, an edit supersedes only what changed and keeps the
history, search finds the right chunk with its provenance and records the retrieval, a
removed file or source leaves search, and bad input is a 400."""

from typing import Any

import pytest
from django_tenants.utils import schema_context

from apps.core.errors import Invalid, NotFound
from apps.knowledge import services, store
from apps.knowledge.models import KnowledgeChunk, KnowledgeSource
from apps.tenancy.audit import Actor
from apps.tenancy.models import AuditEvent
from tests.conftest import World
from tests.knowledge.conftest import make_source, put_file

pytestmark = pytest.mark.django_db

BILLING_V1 = '''"""Billing helpers."""


def invoice_total(items):
    """The sum of the items' prices, in cents."""
    return sum(item.price_cents for item in items)


def send_reminder(customer):
    """Email a customer whose invoice is unpaid."""
    mail(customer.email, "Your invoice is due")
'''

BILLING_V2 = BILLING_V1.replace('"Your invoice is due"', '"Your invoice is overdue, please pay"')

GUIDE = """# Deploying

## Staging
Push to the staging branch; the pipeline deploys within ten minutes.

## Rollback
Run `make rollback` with the release tag to go back to the previous release.
"""


def _current(source: KnowledgeSource, path: str) -> list[KnowledgeChunk]:
    return list(KnowledgeChunk.objects.filter(source=source, path=path, superseded_at__isnull=True))


def test_putting_the_same_file_again_changes_nothing(chroma_mode: str, world: World) -> None:
    with schema_context(world.alpha.schema_name):
        source = make_source(world, world.alpha, kind="repository", name="shop")
        first = put_file(source, "shop/billing.py", BILLING_V1, commit="c1")
        assert first.added >= 3
        assert first.superseded == 0
        again = put_file(source, "shop/billing.py", BILLING_V1, commit="c1")
        assert again == services.PutResult(added=0, unchanged=first.added, superseded=0)
        rows = _current(source, "shop/billing.py")
        assert len(rows) == first.added
        assert {row.version for row in rows} == {1}
        assert all(row.indexed_at is not None for row in rows)
        assert store.current_index().count() == first.added
        source.refresh_from_db()
        assert source.chunk_count == first.added


def test_an_edit_supersedes_only_what_changed_and_keeps_the_history(chroma_mode: str, world: World) -> None:
    with schema_context(world.alpha.schema_name):
        source = make_source(world, world.alpha, kind="repository", name="shop")
        first = put_file(source, "shop/billing.py", BILLING_V1, commit="c1")
        edited = put_file(source, "shop/billing.py", BILLING_V2, commit="c2")
        assert edited == services.PutResult(added=1, unchanged=first.added - 1, superseded=1)

        old = KnowledgeChunk.objects.get(source=source, superseded_at__isnull=False)
        assert "Your invoice is due" in old.text
        assert old.version == 1
        new = KnowledgeChunk.objects.get(source=source, version=2)
        assert "overdue" in new.text
        assert new.commit == "c2"
        assert new.title.endswith("send_reminder")
        assert new.superseded_at is None

        hits = services.search(
            organization=world.alpha, query="email the customer about an unpaid invoice", k=5
        )
        texts = [hit.text for hit in hits]
        assert any("overdue" in text for text in texts)
        assert not any("Your invoice is due" in text for text in texts)
        # The index holds the current chunks only, each once.
        assert sorted(store.current_index().keys()) == sorted(
            row.key for row in _current(source, "shop/billing.py")
        )


def test_search_finds_the_relevant_chunk_with_its_provenance(chroma_mode: str, world: World) -> None:
    with schema_context(world.alpha.schema_name):
        code = make_source(world, world.alpha, kind="repository", name="shop")
        docs = make_source(world, world.alpha, kind="document", name="guide.md")
        put_file(code, "shop/billing.py", BILLING_V1, commit="c1")
        put_file(docs, "guide.md", GUIDE)

        hits = services.search(organization=world.alpha, query="how do I roll back a bad release?", k=3)
        top = hits[0]
        assert top.path == "guide.md"
        assert "make rollback" in top.text
        assert top.title == "Deploying > Rollback"
        assert top.source_name == "guide.md"
        assert top.kind == "document"
        assert top.location == f"guide.md:{top.start_line}-{top.end_line}"
        assert 0 < top.similarity <= 1
        assert top.score > 0
        assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
        # Each result's retrieval is recorded.
        row = KnowledgeChunk.objects.get(pk=top.chunk_id)
        assert row.retrieved_count == 1
        assert row.last_retrieved_at is not None

        code_only = services.search(
            organization=world.alpha, query="sum of prices", k=3, kinds=["repository"]
        )
        assert code_only
        assert all(hit.kind == "repository" for hit in code_only)
        assert "invoice_total" in code_only[0].title
        by_source = services.search(
            organization=world.alpha, query="sum of prices", k=3, source_ids=[docs.pk]
        )
        assert all(hit.source_id == docs.pk for hit in by_source)


def test_bad_searches_are_refused_with_a_reason(knowledge_index: Any, world: World) -> None:
    with schema_context(world.alpha.schema_name):
        with pytest.raises(Invalid, match="empty") as empty:
            services.search(organization=world.alpha, query="   ", k=3)
        assert empty.value.field == "q"
        with pytest.raises(Invalid, match="1 to 50"):
            services.search(organization=world.alpha, query="deploy", k=0)
        with pytest.raises(Invalid, match="Unknown kind"):
            services.search(organization=world.alpha, query="deploy", kinds=["secrets"])
        assert services.search(organization=world.alpha, query="deploy", k=3) == []


def test_a_removed_file_leaves_search_but_its_history_stays(chroma_mode: str, world: World) -> None:
    with schema_context(world.alpha.schema_name):
        source = make_source(world, world.alpha, kind="document", name="guide.md")
        put_file(source, "guide.md", GUIDE)
        removed = services.path_delete(source=source, path="guide.md")
        assert removed > 0
        assert services.search(organization=world.alpha, query="roll back a release", k=5) == []
        assert store.current_index().count() == 0
        assert KnowledgeChunk.objects.filter(source=source, superseded_at__isnull=False).count() == removed
        assert services.path_delete(source=source, path="guide.md") == 0
        source.refresh_from_db()
        assert source.chunk_count == 0


def test_deleting_a_source_removes_it_everywhere_and_is_audited(chroma_mode: str, world: World) -> None:
    with schema_context(world.alpha.schema_name):
        kept = make_source(world, world.alpha, kind="document", name="guide.md")
        gone = make_source(world, world.alpha, kind="repository", name="shop")
        put_file(kept, "guide.md", GUIDE)
        put_file(gone, "shop/billing.py", BILLING_V1)
        put_file(gone, "shop/billing.py", BILLING_V2)
        versions = KnowledgeChunk.objects.filter(source=gone).count()

        deleted = services.source_delete(organization=world.alpha, source=gone, actor=Actor(user=world.alice))
        assert deleted == versions
        assert not KnowledgeSource.objects.filter(pk=gone.pk).exists()
        assert not KnowledgeChunk.objects.filter(source_id=gone.pk).exists()
        assert sorted(store.current_index().keys()) == sorted(row.key for row in _current(kept, "guide.md"))
        event = AuditEvent.objects.get(organization=world.alpha, action="knowledge.source_deleted")
        assert event.actor == world.alice
        assert event.changes["before"]["name"] == "shop"
        with pytest.raises(NotFound):
            put_file(gone, "shop/billing.py", BILLING_V1)


def test_creating_a_source_is_audited_and_checked(knowledge_index: Any, world: World) -> None:
    with schema_context(world.alpha.schema_name):
        source = make_source(world, world.alpha, kind="repository", name="shop")
        assert AuditEvent.objects.filter(action="knowledge.source_created", target_id=str(source.pk)).exists()
        actor = Actor(user=world.alice)
        with pytest.raises(Invalid, match="kind"):
            services.source_create(organization=world.alpha, kind="secret", name="x", actor=actor)
        with pytest.raises(Invalid, match="name"):
            services.source_create(organization=world.alpha, kind="note", name="  ", actor=actor)


def test_services_refuse_an_organization_that_is_not_the_current_schema(
    knowledge_index: Any, world: World
) -> None:
    with schema_context(world.beta.schema_name), pytest.raises(RuntimeError, match="org_alpha"):
        services.search(organization=world.alpha, query="deploy")
