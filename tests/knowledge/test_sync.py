"""Between a run's session and the organization's knowledge: a run starts with what is
relevant preloaded; at its end what it kept becomes experience (near-duplicates not
repeated, the same key superseding the older version), a succeeded run credits what it
retrieved, and distilling the same run twice changes nothing."""

from typing import Any

import pytest
from django_tenants.utils import schema_context

from apps.knowledge import services, store, sync
from apps.knowledge.models import KnowledgeChunk, KnowledgeRunSync
from apps.knowledge.session import session_end, session_for
from tests.conftest import World
from tests.knowledge.conftest import make_source, put_file

pytestmark = pytest.mark.django_db

GUIDE = """# Operations

## Tests
Run the test suite with `make test`; it starts PostgreSQL and Redis first.

## Releases
Tag the release with `make release VERSION=x.y.z`; CI publishes it.
"""


@pytest.fixture
def runs() -> Any:
    started: list[str] = []

    def start(run_id: str) -> str:
        started.append(run_id)
        return run_id

    yield start
    for run_id in started:
        session_end(run_id)


def _state() -> list[tuple[Any, ...]]:
    """Everything distilling can change, to compare before and after."""
    return list(
        KnowledgeChunk.objects.order_by("id").values_list(
            "id", "path", "version", "superseded_at", "useful_count", "retrieved_count", "run_id"
        )
    )


def test_a_run_starts_with_the_relevant_knowledge_preloaded(
    knowledge_index: Any, world: World, runs: Any
) -> None:
    run_id = runs("run-preload")
    with schema_context(world.alpha.schema_name):
        put_file(make_source(world, world.alpha, name="ops.md"), "ops.md", GUIDE)
        hits = sync.preload(organization=world.alpha, run_id=run_id, task_text="Fix the failing tests", k=1)
        assert len(hits) == 1
        assert "make test" in hits[0].text
        memory = session_for(run_id)
        found = memory.search("how are tests run?", k=1)[0].item
        assert found.kind == "snippet"
        assert found.metadata["location"] == hits[0].location
        assert memory.retrieved_keys == {hits[0].key}
        assert memory.kept_items() == []  # already global: never distilled again
        assert sync.preload(organization=world.alpha, run_id=run_id, task_text="  ") == []


def test_distilling_a_run_twice_changes_nothing(chroma_mode: str, world: World, runs: Any) -> None:
    run_id = runs("run-twice")
    with schema_context(world.alpha.schema_name):
        put_file(make_source(world, world.alpha, name="ops.md"), "ops.md", GUIDE)
        sync.preload(organization=world.alpha, run_id=run_id, task_text="run the tests", k=2)
        memory = session_for(run_id)
        memory.add("The integration tests need REDIS_URL set, or they hang.", metadata={"key": "tests-redis"})
        memory.add("Observation: ruff fails on E501 above 110 columns.", kind="observation", keep=True)
        memory.add("Observation: 14 files changed.", kind="observation")  # not marked

        first = sync.distil(
            organization=world.alpha, run_id=run_id, outcome="succeeded", summary="Fixed the tests"
        )
        assert first.added == 3  # two kept items and the outcome
        assert first.credited == 2  # both preloaded chunks
        assert not first.already
        experience = KnowledgeChunk.objects.filter(kind="experience")
        assert experience.count() == 3
        assert set(experience.values_list("run_id", flat=True)) == {run_id}
        assert experience.filter(path="experience/tests-redis").exists()
        before, indexed = _state(), store.current_index().count()

        again = sync.distil(
            organization=world.alpha, run_id=run_id, outcome="succeeded", summary="Fixed the tests"
        )
        assert again.already
        assert (again.added, again.credited, again.duplicates) == (
            first.added,
            first.credited,
            first.duplicates,
        )
        assert _state() == before
        assert store.current_index().count() == indexed
        assert KnowledgeRunSync.objects.filter(run_id=run_id).count() == 1

        # The experience is found by later searches, with its run as provenance.
        hit = services.search(
            organization=world.alpha, query="tests hang without redis", k=1, kinds=["experience"]
        )[0]
        assert hit.run_id == run_id
        assert "REDIS_URL" in hit.text


def test_near_duplicates_are_not_added_again_and_their_usage_goes_up(
    knowledge_index: Any, world: World, runs: Any
) -> None:
    with schema_context(world.alpha.schema_name):
        session_for(runs("run-a")).add("The integration tests need REDIS_URL set, or they hang.")
        sync.distil(organization=world.alpha, run_id="run-a", outcome="failed")
        original = KnowledgeChunk.objects.get(kind="experience")

        session_for(runs("run-b")).add("The integration tests need REDIS_URL set, or else they hang.")
        result = sync.distil(organization=world.alpha, run_id="run-b", outcome="failed")
        assert (result.added, result.duplicates) == (0, 1)
        assert KnowledgeChunk.objects.filter(kind="experience").count() == 1
        original.refresh_from_db()
        assert original.useful_count == 1


def test_the_same_key_supersedes_the_older_version_and_keeps_it(
    knowledge_index: Any, world: World, runs: Any
) -> None:
    with schema_context(world.alpha.schema_name):
        session_for(runs("run-1")).add("Deploys go through Jenkins.", metadata={"key": "How we deploy"})
        sync.distil(organization=world.alpha, run_id="run-1", outcome="succeeded")
        session_for(runs("run-2")).add(
            "Deploys now go through GitHub Actions; Jenkins was retired in May.",
            metadata={"key": "How we deploy"},
        )
        result = sync.distil(organization=world.alpha, run_id="run-2", outcome="succeeded")
        assert (result.added, result.superseded) == (1, 1)
        versions = list(
            KnowledgeChunk.objects.filter(path="experience/how-we-deploy")
            .order_by("version")
            .values_list("version", "run_id", "superseded_at")
        )
        assert [(version, run) for version, run, _ in versions] == [(1, "run-1"), (2, "run-2")]
        assert versions[0][2] is not None
        assert versions[1][2] is None
        hits = services.search(organization=world.alpha, query="how do we deploy?", k=5, kinds=["experience"])
        assert [hit.run_id for hit in hits] == ["run-2"]


def test_only_a_succeeded_run_credits_what_it_retrieved(
    knowledge_index: Any, world: World, runs: Any
) -> None:
    with schema_context(world.alpha.schema_name):
        put_file(make_source(world, world.alpha, name="ops.md"), "ops.md", GUIDE)
        sync.preload(organization=world.alpha, run_id=runs("run-failed"), task_text="release a version", k=1)
        assert sync.distil(organization=world.alpha, run_id="run-failed", outcome="failed").credited == 0
        assert not KnowledgeChunk.objects.filter(useful_count__gt=0).exists()

        sync.preload(organization=world.alpha, run_id=runs("run-ok"), task_text="release a version", k=1)
        assert sync.distil(organization=world.alpha, run_id="run-ok", outcome="succeeded").credited == 1
        credited = KnowledgeChunk.objects.get(useful_count=1)
        assert "make release" in credited.text


def test_with_the_index_down_a_run_starts_and_ends_all_the_same(
    settings: Any, world: World, runs: Any
) -> None:
    from tests.conftest import free_port

    settings.CHROMA_URL = f"http://127.0.0.1:{free_port()}"
    store.clients_reset()
    try:
        with schema_context(world.alpha.schema_name):
            assert (
                sync.preload(organization=world.alpha, run_id=runs("run-down"), task_text="run tests") == []
            )
            session_for("run-down").add("The cache must be warmed before the benchmark.")
            result = sync.distil(organization=world.alpha, run_id="run-down", outcome="succeeded")
            assert result.added == 1
            assert KnowledgeChunk.objects.get(kind="experience").indexed_at is None  # sent later
    finally:
        store.clients_reset()
