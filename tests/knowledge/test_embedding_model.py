"""An organization's choice of embedding model: the local MiniLM by default, or an embedding
model of the LLM gateway (here OpenAI's text-embedding-3-small, through the real openai SDK
against the loopback fake). Choosing one re-embeds the organization's knowledge into a
collection of that model's own while searches keep reading the previous one, which is
dropped once the new one is complete; other organizations are untouched; a model the
organization cannot use is a 400 naming it."""

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.test import Client
from django_tenants.utils import schema_context

from apps.knowledge import services, store, tasks
from apps.knowledge.embeddings import providers_reset
from apps.knowledge.models import KnowledgeChunk, KnowledgePolicy
from apps.llm.services import model_access_set
from apps.tenancy.audit import Actor
from tests.api.conftest import error_of, send_json
from tests.conftest import World, client_for
from tests.fakes.openai_server import FakeOpenAI
from tests.knowledge.conftest import make_source, put_file
from tests.llm.conftest import openai_fake  # noqa: F401 (a fixture)
from tests.llm.gateway_helpers import openai_platform  # noqa: F401 (a fixture)

pytestmark = pytest.mark.django_db

API = "/api/v1"
OPENAI = "text-embedding-3-small"
LARGE = "text-embedding-3-large"
GUIDE = """# Deploying

## Staging
Push to the staging branch; the pipeline deploys within ten minutes.

## Rollback
Run `make rollback` with the release tag to go back to the previous release.
"""
BETA_NOTES = """# Beta

## Invoices
Invoices are totalled nightly by the billing job.
"""
RETENTION = {"max_items": 200_000, "max_age_days": 365, "keep_versions": 3}


@pytest.fixture
def openai(openai_platform: FakeOpenAI) -> Iterator[FakeOpenAI]:  # noqa: F811
    """The platform's OpenAI credentials lead to the fake; no provider (with its vector
    cache) nor gateway snapshot is left from another test."""
    from apps.llm.gateway import gateway_reset

    gateway_reset()
    providers_reset()
    yield openai_platform
    gateway_reset()
    providers_reset()


@pytest.fixture
def index(chroma_mode: str) -> Iterator[str]:
    """Both index modes, every knowledge collection gone before and after (the session's
    Chroma server outlives each test's rollback, and a model's collection is not one the
    other tests empty)."""
    for name in store.collection_names():
        store.collection_drop(name)
    yield chroma_mode
    for name in store.collection_names():
        store.collection_drop(name)


def _choose(client: Client, model: str) -> Any:
    return send_json(client, "put", "/knowledge/policy", {**RETENTION, "embedding_model": model})


def _embedded(fake: FakeOpenAI) -> list[str]:
    """Every text the fake was asked to embed, in order."""
    return [text for request in fake.requests_to("/embeddings") for text in request.json["input"]]


def _current() -> Any:
    return KnowledgeChunk.objects.filter(superseded_at__isnull=True)


def _search(client: Client, query: str) -> list[dict[str, Any]]:
    response = client.get(f"{API}/knowledge/search", {"q": query, "k": "3"})
    assert response.status_code == 200, response.content
    results: list[dict[str, Any]] = response.json()["results"]
    return results


def test_an_organization_moves_its_knowledge_to_a_gateway_model_and_searches_with_it(
    index: str, world: World, openai: FakeOpenAI
) -> None:
    with schema_context(world.alpha.schema_name):
        put_file(make_source(world, world.alpha, name="guide"), "deploying.md", GUIDE)
        texts = sorted(_current().values_list("text", flat=True))
    with schema_context(world.beta.schema_name):
        put_file(make_source(world, world.beta, name="notes"), "beta.md", BETA_NOTES)
    alpha = client_for(world.alice, world.alpha)

    chosen = _choose(alpha, OPENAI)

    assert chosen.status_code == 200, chosen.content
    assert chosen.json()["embedding_model"] == OPENAI
    assert chosen.json()["search_embedding_model"] == ""
    assert chosen.json()["reindexing"] is True
    with schema_context(world.alpha.schema_name):
        assert not _current().filter(indexed_at__isnull=False).exists()  # all to be embedded again
    assert _embedded(openai) == []  # the worker does it, not the request

    result = tasks.index_pending_task()

    assert result["indexed"] == {"alpha": {"sent": len(texts), "removed": 0}}
    assert sorted(_embedded(openai)) == texts
    assert {request.json["model"] for request in openai.requests_to("/embeddings")} == {OPENAI}
    policy = alpha.get(f"{API}/knowledge/policy").json()
    assert (policy["embedding_model"], policy["search_embedding_model"], policy["reindexing"]) == (
        OPENAI,
        OPENAI,
        False,
    )
    with schema_context(world.alpha.schema_name):
        assert store.current_index(OPENAI).count() == len(texts)
    names = store.collection_names()
    assert store.collection_name("org_alpha") not in names  # the MiniLM collection is dropped
    assert store.collection_name("org_alpha", OPENAI) in names
    assert store.collection_name("org_beta") in names

    found = _search(alpha, "make rollback with the release tag")
    assert "make rollback" in found[0]["text"]
    assert _embedded(openai)[-1] == "make rollback with the release tag"

    # Beta still embeds with the local model: its search finds its notes and asks the fake nothing.
    asked = len(openai.requests_to("/embeddings"))
    beta_found = _search(client_for(world.bob, world.beta), "when are invoices totalled?")
    assert "totalled nightly" in beta_found[0]["text"]
    assert len(openai.requests_to("/embeddings")) == asked
    with schema_context(world.beta.schema_name):
        assert services.embedders() == services.Embedders(write="", search="")


def test_searches_read_the_previous_model_until_every_chunk_is_embedded_again(
    index: str, world: World, openai: FakeOpenAI
) -> None:
    alpha = client_for(world.alice, world.alpha)
    with schema_context(world.alpha.schema_name):
        source = make_source(world, world.alpha, name="guide")
        put_file(source, "deploying.md", GUIDE)
        total = _current().count()
        assert total >= 2
    assert _choose(alpha, OPENAI).status_code == 200

    with schema_context(world.alpha.schema_name):
        assert services.index_pending(limit=1) == {"sent": 1, "removed": 0}
        assert services.embedders().reindexing
        # Written during the switch: straight to the new model's collection.
        put_file(source, "runbook.md", "# Runbook\n\nPage the on-call engineer when the pager rings.\n")
        asked = len(openai.requests_to("/embeddings"))
        during = services.search(organization=world.alpha, query="how do I roll back a release?", k=3)
        # Answered by the complete MiniLM collection: the query was not sent to the gateway,
        # and what was added during the switch is not found yet.
        assert len(openai.requests_to("/embeddings")) == asked
        assert "make rollback" in during[0].text
        assert all("pager" not in hit.text for hit in during)

        assert services.index_pending()["sent"] == total - 1
        assert not services.embedders().reindexing
        after = services.search(organization=world.alpha, query="page the on-call engineer pager", k=1)
        assert "pager" in after[0].text
        assert store.current_index(OPENAI).count() == _current().count()


def test_going_back_to_the_local_model_embeds_everything_with_it_again(
    index: str, world: World, openai: FakeOpenAI
) -> None:
    alpha = client_for(world.alice, world.alpha)
    with schema_context(world.alpha.schema_name):
        put_file(make_source(world, world.alpha, name="guide"), "deploying.md", GUIDE)
    assert _choose(alpha, OPENAI).status_code == 200
    tasks.index_pending_all()

    back = _choose(alpha, "")

    assert back.status_code == 200, back.content
    assert back.json()["reindexing"] is True  # searches stay on the gateway model until done
    tasks.index_pending_all()
    with schema_context(world.alpha.schema_name):
        assert services.embedders() == services.Embedders(write="", search="")
        assert store.current_index().count() == _current().count()
        asked = len(openai.requests_to("/embeddings"))
        top = services.search(organization=world.alpha, query="how do I roll back a release?", k=1)[0]
        assert "make rollback" in top.text
        assert len(openai.requests_to("/embeddings")) == asked
    assert store.collection_name("org_alpha", OPENAI) not in store.collection_names()


def test_choosing_a_third_model_during_a_switch_drops_the_half_filled_collection(
    index: str,
    world: World,
    openai: FakeOpenAI,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    alpha = client_for(world.alice, world.alpha)
    with schema_context(world.alpha.schema_name):
        put_file(make_source(world, world.alpha, name="guide"), "deploying.md", GUIDE)
    assert _choose(alpha, OPENAI).status_code == 200
    with schema_context(world.alpha.schema_name):
        services.index_pending(limit=1)
    assert store.collection_name("org_alpha", OPENAI) in store.collection_names()

    with django_capture_on_commit_callbacks(execute=True):
        assert _choose(alpha, LARGE).status_code == 200

    assert store.collection_name("org_alpha", OPENAI) not in store.collection_names()
    with schema_context(world.alpha.schema_name):
        assert services.embedders() == services.Embedders(write=LARGE, search="")
        services.index_pending()
        assert services.embedders() == services.Embedders(write=LARGE, search=LARGE)
        assert store.collection_names() == [store.collection_name("org_alpha", LARGE)]
        top = services.search(organization=world.alpha, query="make rollback with the release tag", k=1)[0]
        assert "make rollback" in top.text
        assert openai.requests_to("/embeddings")[-1].json["model"] == LARGE


def test_an_organization_without_knowledge_switches_at_once(
    index: str, world: World, openai: FakeOpenAI
) -> None:
    chosen = _choose(client_for(world.alice, world.alpha), OPENAI)
    assert chosen.status_code == 200, chosen.content
    assert chosen.json()["reindexing"] is False
    with schema_context(world.alpha.schema_name):
        put_file(make_source(world, world.alpha, name="guide"), "deploying.md", GUIDE)
        assert store.current_index(OPENAI).count() == _current().count()
        assert len(openai.requests_to("/embeddings")) == 1


def test_leaving_the_model_out_keeps_it(index: str, world: World, openai: FakeOpenAI) -> None:
    alpha = client_for(world.alice, world.alpha)
    assert _choose(alpha, OPENAI).status_code == 200
    saved = send_json(alpha, "put", "/knowledge/policy", {**RETENTION, "max_age_days": 30})
    assert saved.status_code == 200, saved.content
    assert saved.json()["embedding_model"] == OPENAI
    assert saved.json()["max_age_days"] == 30


@pytest.mark.parametrize(
    ("model", "code", "words"),
    [
        ("text-embedding-9-huge", "unknown_model", "Unknown embedding model 'text-embedding-9-huge'"),
        ("gpt-4o-mini", "unknown_model", "Unknown embedding model 'gpt-4o-mini'"),
        (OPENAI, "model_disabled", f"The model '{OPENAI}' is disabled"),
        (OPENAI, "missing_credentials", f"No openai credentials for '{OPENAI}'"),
    ],
)
def test_a_model_the_organization_cannot_use_is_a_400_naming_it(
    index: str,
    world: World,
    openai: FakeOpenAI,
    settings: Any,
    model: str,
    code: str,
    words: str,
) -> None:
    if code == "model_disabled":
        model_access_set(
            organization=world.alpha, model_name=OPENAI, enabled=False, actor=Actor(user=world.alice)
        )
    if code == "missing_credentials":
        settings.OPENAI_API_KEY = ""
    alpha = client_for(world.alice, world.alpha)

    refused = _choose(alpha, model)

    assert refused.status_code == 400, refused.content
    error = error_of(refused)
    assert error["code"] == code
    assert "embedding_model" in error["fields"]
    assert words in error["message"]
    with schema_context(world.alpha.schema_name):
        assert not KnowledgePolicy.objects.exists()
    assert alpha.get(f"{API}/knowledge/policy").json()["embedding_model"] == ""
