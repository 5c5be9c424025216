"""Chroma down while knowledge is written: the rows are kept, the writer gets no error,
searches answer 503 with the reason, and once Chroma is back the periodic task sends
every chunk exactly once (superseded ones removed), so the index equals the current chunks."""

from typing import Any

import pytest
from django_tenants.utils import schema_context

from apps.knowledge import services, store, tasks
from apps.knowledge.models import KnowledgeChunk
from apps.tenancy.audit import Actor
from tests.conftest import World
from tests.knowledge.conftest import ChromaServer, make_source, put_file

pytestmark = pytest.mark.django_db

README_V1 = """# Shop

## Install
Run `pip install -e .` inside a virtualenv.

## Test
Run `pytest -q` from the repository root.
"""
README_V2 = README_V1.replace("pytest -q", "make test")
CLI = '''"""The shop's command line."""


def main():
    """Parse the arguments and run the command."""
    return run(parse(sys.argv[1:]))
'''


def _current_keys() -> list[str]:
    return sorted(KnowledgeChunk.objects.filter(superseded_at__isnull=True).values_list("key", flat=True))


def test_chunks_written_while_chroma_is_down_arrive_once_when_it_is_back(
    own_chroma_server: ChromaServer, world: World
) -> None:
    with schema_context(world.alpha.schema_name):
        source = make_source(world, world.alpha, kind="repository", name="shop")
        put_file(source, "README.md", README_V1, commit="c1")
        assert store.current_index().count() == len(_current_keys())

        own_chroma_server.stop()
        edited = put_file(source, "README.md", README_V2, commit="c2")  # no error
        added = put_file(source, "shop/cli.py", CLI, commit="c2")
        assert edited.added == 1
        assert edited.superseded == 1
        assert added.added >= 2
        pending = KnowledgeChunk.objects.filter(indexed_at__isnull=True)
        assert pending.count() == edited.added + edited.superseded + added.added
        reason = services.store_available()
        assert reason is not None
        assert "not reachable" in reason
        with pytest.raises(store.StoreUnavailable):
            services.search(organization=world.alpha, query="how to run the tests")
        assert tasks.index_pending_all() == {}  # still down: nothing changes
        assert pending.count() == edited.added + edited.superseded + added.added

        own_chroma_server.start()
        result = tasks.index_pending_task()
        assert result["indexed"]["alpha"] == {
            "sent": edited.added + added.added,
            "removed": edited.superseded,
        }
        assert not pending.exists()
        assert sorted(store.current_index().keys()) == _current_keys()
        assert tasks.index_pending_all() == {}  # twice: nothing more to send
        assert sorted(store.current_index().keys()) == _current_keys()
        top = services.search(organization=world.alpha, query="how do I run the tests?", k=1)[0]
        assert "make test" in top.text


def test_deleting_a_source_while_chroma_is_down_is_refused_and_changes_nothing(
    own_chroma_server: ChromaServer, world: World
) -> None:
    with schema_context(world.alpha.schema_name):
        source = make_source(world, world.alpha, kind="repository", name="shop")
        put_file(source, "README.md", README_V1)
        own_chroma_server.stop()
        with pytest.raises(store.StoreUnavailable) as refused:
            services.source_delete(organization=world.alpha, source=source, actor=Actor(user=world.alice))
        assert refused.value.status == 503
        assert KnowledgeChunk.objects.filter(source=source).count() == len(_current_keys())
        own_chroma_server.start()
        services.source_delete(organization=world.alpha, source=source, actor=Actor(user=world.alice))
        assert store.current_index().count() == 0


def test_the_task_sends_nothing_when_nothing_is_pending(knowledge_index: Any, world: World) -> None:
    with schema_context(world.alpha.schema_name):
        put_file(make_source(world, world.alpha), "README.md", README_V1)
    assert tasks.index_pending_all() == {}
