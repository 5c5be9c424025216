"""A deleted organization's knowledge index goes with it: its collections are dropped once the
deletion is committed; Chroma being down then blocks nothing, and the sweep in
knowledge.prune drops what was left (and collections of models nobody uses any more),
never another organization's."""

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from django.db import connection
from django_tenants.utils import schema_context, schema_exists

from apps.knowledge import services, store, tasks
from apps.tenancy import services as tenancy_services
from apps.tenancy.audit import Actor
from apps.tenancy.models import Organization
from tests.conftest import World
from tests.knowledge.conftest import ChromaServer, make_source, put_file

pytestmark = pytest.mark.django_db

GUIDE = """# Deploying

## Rollback
Run `make rollback` with the release tag to go back to the previous release.
"""


def _gamma(world: World) -> Organization:
    """A third organization with knowledge of its own."""
    gamma = tenancy_services.organization_create(
        name="Gamma", slug="gamma", created_by=world.olga, provision_async=False
    )
    gamma = tenancy_services.organization_provision(organization_id=gamma.pk)
    with schema_context(gamma.schema_name):
        source = services.source_create(
            organization=gamma, kind="document", name="guide", actor=Actor(user=world.olga)
        )
        put_file(source, "deploying.md", GUIDE)
        assert store.current_index().count() > 0
    with connection.cursor() as cursor:
        # Written in the test's own transaction: its deferred key checks run now, as a commit
        # would, or PostgreSQL refuses to drop the tables they are pending on.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    return gamma


def _alpha_knowledge(world: World) -> int:
    with schema_context(world.alpha.schema_name):
        put_file(make_source(world, world.alpha, name="guide"), "deploying.md", GUIDE)
        return store.current_index().count()


def _alpha_count(world: World) -> int:
    with schema_context(world.alpha.schema_name):
        return store.current_index().count()


def test_deleting_an_organization_drops_its_collections(
    own_chroma_server: ChromaServer, world: World, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    alpha_chunks = _alpha_knowledge(world)
    gamma = _gamma(world)
    assert store.collection_name("org_gamma") in store.collection_names()

    with django_capture_on_commit_callbacks(execute=True):
        tenancy_services.organization_delete(organization=gamma)

    assert not schema_exists("org_gamma")
    assert store.collection_names() == [store.collection_name("org_alpha")]
    assert _alpha_count(world) == alpha_chunks


def test_chroma_down_blocks_no_deletion_and_the_sweep_drops_what_was_left(
    own_chroma_server: ChromaServer, world: World, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    alpha_chunks = _alpha_knowledge(world)
    gamma = _gamma(world)
    with schema_context(world.alpha.schema_name):
        # A collection of a model Alpha does not use (left by a switch while Chroma was down).
        store.current_index("text-embedding-3-large").upsert(
            ["s1-stale"], np.ones((1, 8), dtype=np.float32), [{"kind": "document", "source_id": 1}]
        )
    own_chroma_server.stop()

    with django_capture_on_commit_callbacks(execute=True):
        tenancy_services.organization_delete(organization=gamma)  # no error

    assert not Organization.objects.filter(slug="gamma").exists()
    assert not schema_exists("org_gamma")
    assert tasks.prune_task() == {"pruned": {}, "collections_dropped": []}  # still down: nothing
    own_chroma_server.start()
    assert store.collection_name("org_gamma") in store.collection_names()

    result = tasks.prune_task()

    assert result["collections_dropped"] == sorted(
        [store.collection_name("org_alpha", "text-embedding-3-large"), store.collection_name("org_gamma")]
    )
    assert store.collection_names() == [store.collection_name("org_alpha")]
    assert _alpha_count(world) == alpha_chunks
    with schema_context(world.alpha.schema_name):
        top = services.search(organization=world.alpha, query="how do I roll back a release?", k=1)[0]
        assert "make rollback" in top.text
    assert tasks.prune_task()["collections_dropped"] == []  # twice: nothing more


def test_the_sweep_leaves_a_collection_that_is_being_filled(
    own_chroma_server: ChromaServer, world: World, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    """During a switch both the searched and the chosen model's collections are in use."""
    _alpha_knowledge(world)
    with schema_context(world.alpha.schema_name):
        from apps.knowledge.models import KnowledgePolicy

        KnowledgePolicy.objects.create(embedding_model="text-embedding-3-large", search_embedding_model="")
        store.current_index("text-embedding-3-large").upsert(
            ["s1-new"], np.ones((1, 8), dtype=np.float32), [{"kind": "document", "source_id": 1}]
        )
    before = store.collection_names()
    assert len(before) == 2

    assert services.collections_sweep() == []
    assert store.collection_names() == before
