"""Tenant isolation of knowledge, on both index modes (embedded and a Chroma server):
Alpha's searches never return Beta's chunks, through the service and the REST API, even
for Beta's exact words or when both hold the same file; Beta's sources are out of Alpha's
reach; deleting Alpha's source leaves Beta's index whole."""

from typing import Any

import pytest
from django_tenants.utils import schema_context

from apps.knowledge import services, store
from apps.knowledge.models import KnowledgeChunk, KnowledgeSource
from apps.tenancy.audit import Actor
from tests.api.conftest import key_client, new_key, throttle_reset
from tests.conftest import World, client_for
from tests.knowledge.conftest import make_source, put_file

pytestmark = pytest.mark.django_db

API = "/api/v1"
ALPHA_TEXT = "# Alpha runbook\n\nAlpha's payment gateway key rotates every Tuesday at noon."
BETA_TEXT = "# Beta runbook\n\nBeta's launch code for the zebra project is hidden in vault seven."
SHARED_FILE = "# Contributing\n\nOpen a pull request against main and ask for one review."


@pytest.fixture(autouse=True)
def _fresh_throttle() -> Any:
    throttle_reset()
    yield
    throttle_reset()


@pytest.fixture
def both(chroma_mode: str, world: World) -> dict[str, KnowledgeSource]:
    sources = {}
    for organization, text in ((world.alpha, ALPHA_TEXT), (world.beta, BETA_TEXT)):
        with schema_context(organization.schema_name):
            source = make_source(world, organization, kind="document", name="runbook.md")
            put_file(source, "runbook.md", text)
            put_file(source, "CONTRIBUTING.md", SHARED_FILE)
            sources[organization.slug] = source
    return sources


def _texts(hits: list[services.Hit]) -> str:
    return "\n".join(hit.text for hit in hits)


def test_alpha_s_search_never_returns_beta_s_chunks(both: dict[str, KnowledgeSource], world: World) -> None:
    with schema_context(world.alpha.schema_name):
        hits = services.search(organization=world.alpha, query=BETA_TEXT, k=50)
        alpha_keys = set(KnowledgeChunk.objects.values_list("key", flat=True))
        assert hits
        assert "zebra" not in _texts(hits)
        assert {hit.key for hit in hits} <= alpha_keys
        shared = services.search(organization=world.alpha, query=SHARED_FILE, k=50)
        assert [hit.source_id for hit in shared if "pull request" in hit.text] == [both["alpha"].pk]
    with schema_context(world.beta.schema_name):
        hits = services.search(organization=world.beta, query=ALPHA_TEXT, k=50)
        assert "payment gateway" not in _texts(hits)


def test_alpha_s_api_never_returns_beta_s_chunks(both: dict[str, KnowledgeSource], world: World) -> None:
    with schema_context(world.alpha.schema_name):
        alpha_chunks = set(KnowledgeChunk.objects.values_list("pk", flat=True))
        alpha_sources = set(KnowledgeSource.objects.values_list("pk", flat=True))
    _, alpha_raw = new_key(world, ["knowledge:read"], name="alpha reader")
    for client in (key_client(alpha_raw), client_for(world.amy, world.alpha)):
        response = client.get(f"{API}/knowledge/search", {"q": BETA_TEXT, "k": "50"})
        assert response.status_code == 200
        results = response.json()["results"]
        assert results
        assert not any("zebra" in hit["text"] for hit in results)
        assert {hit["chunk_id"] for hit in results} <= alpha_chunks
        listed = client.get(f"{API}/knowledge/sources").json()["results"]
        assert {source["id"] for source in listed} == alpha_sources
    # Beta's key on Alpha's host: refused before any search.
    _, beta_raw = new_key(world, ["knowledge:read"], organization=world.beta, name="beta reader")
    beta_on_alpha = key_client(beta_raw, world.alpha).get(f"{API}/knowledge/search", {"q": "payment gateway"})
    assert beta_on_alpha.status_code == 403
    # Beta's own key finds Beta's runbook only.
    beta_search = key_client(beta_raw).get(f"{API}/knowledge/search", {"q": ALPHA_TEXT, "k": "50"})
    assert not any("payment gateway" in hit["text"] for hit in beta_search.json()["results"])


def test_deleting_alpha_s_source_leaves_beta_s_index_whole(
    both: dict[str, KnowledgeSource], world: World
) -> None:
    with schema_context(world.beta.schema_name):
        beta_keys = sorted(store.current_index().keys())
        assert len(beta_keys) == KnowledgeChunk.objects.count()
    with schema_context(world.alpha.schema_name):
        services.source_delete(organization=world.alpha, source=both["alpha"], actor=Actor(user=world.alice))
        assert store.current_index().count() == 0
    with schema_context(world.beta.schema_name):
        assert sorted(store.current_index().keys()) == beta_keys
        hits = services.search(organization=world.beta, query="zebra launch code", k=1)
        assert "vault seven" in hits[0].text


def test_a_service_call_for_beta_inside_alpha_s_schema_is_refused(
    both: dict[str, KnowledgeSource], world: World
) -> None:
    with schema_context(world.alpha.schema_name), pytest.raises(RuntimeError):
        services.search(organization=world.beta, query="zebra")
