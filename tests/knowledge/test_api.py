"""/api/v1/knowledge over HTTP: search with provenance, sources (list, read, delete), the
retention policy; roles and scopes; bad input as 400 with the error body; the index
unreachable as 503 with the reason; another organization's knowledge out of reach."""

from typing import Any

import pytest
from django.test import Client
from django_tenants.utils import schema_context

from apps.knowledge import store
from apps.knowledge.models import KnowledgeChunk, KnowledgePolicy, KnowledgeSource
from apps.tenancy.models import AuditEvent
from tests.api.conftest import error_of, key_client, new_key, send_json, throttle_reset
from tests.conftest import World, client_for, free_port
from tests.knowledge.conftest import make_source, put_file

pytestmark = pytest.mark.django_db

API = "/api/v1"
GUIDE = """# Deploying

## Staging
Push to the staging branch; the pipeline deploys within ten minutes.

## Rollback
Run `make rollback` with the release tag to go back to the previous release.
"""


@pytest.fixture(autouse=True)
def _fresh_throttle() -> Any:
    throttle_reset()
    yield
    throttle_reset()


@pytest.fixture
def guide(knowledge_index: Any, world: World) -> KnowledgeSource:
    with schema_context(world.alpha.schema_name):
        source = make_source(world, world.alpha, kind="document", name="deploying.md")
        put_file(source, "deploying.md", GUIDE)
        return source


def _reader(world: World) -> Client:
    _, raw = new_key(world, ["knowledge:read"], name="knowledge reader")
    return key_client(raw)


def test_a_member_searches_and_gets_results_with_provenance(guide: KnowledgeSource, world: World) -> None:
    amy = client_for(world.amy, world.alpha)
    response = amy.get(f"{API}/knowledge/search", {"q": "how do I undo a release?", "k": "2"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["query"] == "how do I undo a release?"
    top = body["results"][0]
    assert "make rollback" in top["text"]
    assert top["source_name"] == "deploying.md"
    assert top["title"] == "Deploying > Rollback"
    assert top["location"] == f"deploying.md:{top['start_line']}-{top['end_line']}"
    assert top["kind"] == "document"
    assert top["score"] > 0
    assert len(body["results"]) == 2

    only_code = amy.get(f"{API}/knowledge/search", {"q": "undo a release", "kind": "repository"})
    assert only_code.json()["results"] == []
    same_source = amy.get(f"{API}/knowledge/search", {"q": "undo a release", "source_id": str(guide.pk)})
    assert {hit["source_id"] for hit in same_source.json()["results"]} == {guide.pk}


def test_an_api_key_with_the_read_scope_searches(guide: KnowledgeSource, world: World) -> None:
    response = _reader(world).get(f"{API}/knowledge/search", {"q": "staging deploys"})
    assert response.status_code == 200
    assert "staging" in response.json()["results"][0]["text"]


@pytest.mark.parametrize(
    ("params", "field", "code"),
    [
        ({"q": ""}, "q", "empty_query"),
        ({"q": "   "}, "q", "empty_query"),
        ({}, "q", "invalid"),
        ({"q": "deploy", "k": "0"}, "k", "invalid"),
        ({"q": "deploy", "k": "many"}, "k", "invalid"),
        ({"q": "deploy", "kind": "secrets"}, "kind", "invalid"),
        ({"q": "x" * 2001}, "q", "invalid"),
        ({"q": "deploy", "mode": "fast"}, "mode", "invalid"),
    ],
)
def test_bad_searches_are_a_400_naming_the_field(
    knowledge_index: Any, world: World, params: dict[str, str], field: str, code: str
) -> None:
    response = _reader(world).get(f"{API}/knowledge/search", params)
    assert response.status_code == 400, response.content
    error = error_of(response)
    assert error["code"] == code
    assert field in error["fields"]


def test_search_with_the_index_unreachable_is_a_503_with_the_reason(settings: Any, world: World) -> None:
    settings.CHROMA_URL = f"http://127.0.0.1:{free_port()}"
    store.clients_reset()
    try:
        response = _reader(world).get(f"{API}/knowledge/search", {"q": "deploy"})
    finally:
        store.clients_reset()
    assert response.status_code == 503
    error = error_of(response)
    assert error["code"] == "knowledge_index_unavailable"
    assert "Chroma server at 127.0.0.1" in error["message"]
    assert "not reachable" in error["message"]


def test_sources_are_listed_read_and_filtered(guide: KnowledgeSource, world: World) -> None:
    with schema_context(world.alpha.schema_name):
        make_source(world, world.alpha, kind="note", name="scratch")
    client = _reader(world)
    listed = client.get(f"{API}/knowledge/sources")
    assert listed.status_code == 200
    names = [source["name"] for source in listed.json()["results"]]
    assert names == ["scratch", "deploying.md"]  # newest first
    documents = client.get(f"{API}/knowledge/sources", {"kind": "document"}).json()["results"]
    assert [source["id"] for source in documents] == [guide.pk]
    read = client.get(f"{API}/knowledge/sources/{guide.pk}").json()
    assert read["kind"] == "document"
    assert read["chunk_count"] == 2
    assert client.get(f"{API}/knowledge/sources/999999").status_code == 404


def test_a_builder_deletes_a_source_and_a_reader_may_not(guide: KnowledgeSource, world: World) -> None:
    refused = _reader(world).delete(f"{API}/knowledge/sources/{guide.pk}")
    assert refused.status_code == 403
    assert error_of(refused)["code"] == "missing_scope"

    amy = client_for(world.amy, world.alpha)  # a member: a builder
    deleted = amy.delete(f"{API}/knowledge/sources/{guide.pk}")
    assert deleted.status_code == 204
    with schema_context(world.alpha.schema_name):
        assert not KnowledgeSource.objects.filter(pk=guide.pk).exists()
        assert not KnowledgeChunk.objects.exists()
        assert store.current_index().count() == 0
        assert AuditEvent.objects.filter(action="knowledge.source_deleted", actor=world.amy).exists()
    assert amy.get(f"{API}/knowledge/search", {"q": "rollback"}).json()["results"] == []


def test_the_retention_policy_is_read_and_replaced(knowledge_index: Any, world: World) -> None:
    client = client_for(world.alice, world.alpha)
    defaults = client.get(f"{API}/knowledge/policy").json()
    assert defaults["max_items"] == 200_000
    assert defaults["per_kind"] == {}
    policy = {
        "max_items": 50_000,
        "max_age_days": 180,
        "keep_versions": 2,
        "per_kind": {"experience": {"max_items": 5000, "max_age_days": 90}},
    }
    saved = send_json(client, "put", "/knowledge/policy", policy)
    assert saved.status_code == 200, saved.content
    assert {key: saved.json()[key] for key in policy} == policy
    assert {key: client.get(f"{API}/knowledge/policy").json()[key] for key in policy} == policy
    with schema_context(world.alpha.schema_name):
        assert KnowledgePolicy.objects.count() == 1
        event = AuditEvent.objects.get(action="knowledge.policy_updated")
        assert event.changes["after"]["max_age_days"] == 180


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"max_items": 0, "max_age_days": 30, "keep_versions": 1}, "max_items"),
        ({"max_items": 10, "max_age_days": -1, "keep_versions": 1}, "max_age_days"),
        ({"max_items": 10, "max_age_days": 30}, "keep_versions"),
        ({"max_items": 10, "max_age_days": 30, "keep_versions": 1, "per_kind": {"secrets": {}}}, "per_kind"),
        (
            {"max_items": 10, "max_age_days": 30, "keep_versions": 1, "per_kind": {"note": {"max_size": 3}}},
            "per_kind",
        ),
        ({"max_items": 10, "max_age_days": 30, "keep_versions": 1, "retention": "forever"}, "retention"),
    ],
)
def test_a_bad_policy_is_a_400_naming_the_field(
    knowledge_index: Any, world: World, body: dict[str, Any], field: str
) -> None:
    response = send_json(client_for(world.alice, world.alpha), "put", "/knowledge/policy", body)
    assert response.status_code == 400, response.content
    assert field in error_of(response)["fields"]


def test_a_reader_may_not_change_the_policy(knowledge_index: Any, world: World) -> None:
    body = {"max_items": 10, "max_age_days": 30, "keep_versions": 1}
    response = send_json(_reader(world), "put", "/knowledge/policy", body)
    assert response.status_code == 403
