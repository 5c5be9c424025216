"""The knowledge page, as people use it, with the real embedded index: a member uploads a
document, sees it among the sources with its chunk count, searches and sees the result
with its provenance and score, deletes it after the confirmation; viewers search and
read but cannot change anything; bad input is shown on its field with a 4xx; the index
unreachable is a 503 with the reason; a repository of a running workspace is queued and
shown pending; only Alpha's knowledge shows on Alpha's page."""

import re
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings
from django_tenants.utils import schema_context

from apps.knowledge import store
from apps.knowledge.documents import document_upload
from apps.knowledge.models import KnowledgeChunk, KnowledgeSource
from apps.tenancy.audit import Actor
from apps.tenancy.models import Membership
from apps.workspaces.models import Workspace
from tests.conftest import World, client_for, free_port
from tests.factories import make_user
from tests.workspaces.conftest import Cleanup, make_workspace, workspaces_cleanup  # noqa: F401

pytestmark = pytest.mark.django_db

GUIDE = (
    "# Onboarding\n\nWelcome to the warehouse team.\n\n"
    "## Badge access\n\nBadges are collected from the front desk on the first morning; bring an ID card.\n"
)


def _file(name: str, data: bytes, content_type: str = "text/markdown") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type=content_type)


def _statuses(page: str) -> dict[str, str]:
    return dict(re.findall(r'data-testid="source-row" data-name="([^"]+)" data-status="([^"]+)"', page))


def test_a_member_uploads_searches_and_deletes_a_document(world: World, knowledge_index: Any) -> None:
    amy = client_for(world.amy, world.alpha)
    empty = amy.get("/knowledge/")
    assert empty.status_code == 200
    page = empty.content.decode()
    assert 'href="/knowledge/" aria-current="page">Knowledge</a>' in page  # in the sidebar
    assert "No knowledge yet. Add a repository or upload a document below." in page
    assert 'enctype="multipart/form-data"' in page
    assert "No workspace is running" in page

    uploaded = amy.post(
        "/knowledge/documents/", {"file": _file("onboarding.md", GUIDE.encode())}, follow=True
    )
    assert uploaded.status_code == 200
    page = uploaded.content.decode()
    with schema_context(world.alpha.schema_name):
        source = KnowledgeSource.objects.get(name="onboarding.md")
    assert f"onboarding.md was added: {source.chunk_count} chunks." in page
    assert _statuses(page) == {"onboarding.md": "ready"}
    assert f'data-testid="source-chunks">{source.chunk_count}</span>' in page

    again = amy.post("/knowledge/documents/", {"file": _file("onboarding.md", GUIDE.encode())}, follow=True)
    assert "onboarding.md is unchanged; nothing to do." in again.content.decode()

    found = amy.get("/knowledge/", {"q": "where do I get my badge on the first day", "kind": "document"})
    assert found.status_code == 200
    page = found.content.decode()
    hits = re.findall(r'data-testid="hit-location">([^<]+)</code>', page)
    assert hits[0] == "onboarding.md:5-7"
    assert 'data-testid="hit-source">onboarding.md</strong>' in page
    assert "Badges are collected from the front desk" in page
    assert re.search(r'data-testid="hit-score">score 0\.\d{3}</span>', page)

    nothing = amy.get("/knowledge/", {"q": "badge", "kind": "repository"})
    assert 'data-testid="search-empty"' in nothing.content.decode()

    listing = amy.get("/knowledge/").content.decode()
    assert f'action="/knowledge/sources/{source.pk}/delete/"' in listing
    assert 'data-confirm="Delete onboarding.md and its' in listing
    assert "/static/js/confirm.js" in listing
    deleted = amy.post(f"/knowledge/sources/{source.pk}/delete/", follow=True)
    assert "onboarding.md and its chunks were deleted." in deleted.content.decode()
    with schema_context(world.alpha.schema_name):
        assert not KnowledgeSource.objects.exists()
        assert not KnowledgeChunk.objects.exists()
        assert store.current_index().count() == 0


def test_viewers_search_and_read_but_cannot_change_anything(world: World, knowledge_index: Any) -> None:
    with schema_context(world.alpha.schema_name):
        source = document_upload(
            organization=world.alpha, actor=Actor(user=world.alice), name="onboarding.md", data=GUIDE.encode()
        ).source
    viewer = make_user("vic@alpha.test", "Vic")
    Membership.objects.create(user=viewer, organization=world.alpha, role=Membership.Role.VIEWER)
    vic = client_for(viewer, world.alpha)
    page = vic.get("/knowledge/").content.decode()
    assert _statuses(page) == {"onboarding.md": "ready"}
    assert "Add knowledge" not in page
    assert "/delete/" not in page
    assert vic.get("/knowledge/", {"q": "badge"}).status_code == 200
    assert vic.get("/knowledge/sources/").status_code == 200
    for path, data in [
        ("/knowledge/documents/", {"file": _file("x.md", b"# x\n\ny\n")}),
        ("/knowledge/repositories/", {"workspace": "1"}),
        (f"/knowledge/sources/{source.pk}/delete/", {}),
        (f"/knowledge/sources/{source.pk}/reindex/", {}),
    ]:
        refused = vic.post(path, data)
        assert refused.status_code == 403, path
        assert "knowledge" in refused.content.decode().lower()
    with schema_context(world.alpha.schema_name):
        assert list(KnowledgeSource.objects.values_list("name", flat=True)) == ["onboarding.md"]


@pytest.mark.parametrize(
    ("upload", "status", "message"),
    [
        ({"file": _file("photo.png", b"\x89PNG", "image/png")}, 400, "photo.png: .png is not a supported"),
        ({"file": _file("empty.md", b"")}, 400, "empty.md is empty."),
        (
            {"file": _file("latin.txt", "é".encode("latin-1"), "text/plain")},
            400,
            "latin.txt is not UTF-8 text",
        ),
        ({}, 400, "This field is required."),
    ],
)
def test_bad_uploads_are_shown_on_the_file_field(
    world: World, upload: dict[str, Any], status: int, message: str
) -> None:
    response = client_for(world.amy, world.alpha).post("/knowledge/documents/", upload)
    assert response.status_code == status
    field = re.search(r'<div class="field has-error">.*?</div>', response.content.decode(), re.DOTALL)
    assert field is not None
    assert 'name="file"' in field.group(0)
    assert message in field.group(0).replace("&#x27;", "'")


@override_settings(KNOWLEDGE_MAX_UPLOAD_BYTES=2 * 1024 * 1024)
def test_an_oversized_upload_names_the_limit(world: World) -> None:
    response = client_for(world.amy, world.alpha).post(
        "/knowledge/documents/", {"file": _file("big.md", b"a" * (3 * 1024 * 1024))}
    )
    assert response.status_code == 400
    assert "big.md is 3 MB, over the limit of 2 MB for a document" in response.content.decode()


def test_bad_searches_are_refused_on_the_query_field(world: World, knowledge_index: Any) -> None:
    amy = client_for(world.amy, world.alpha)
    empty = amy.get("/knowledge/", {"q": "  "})
    assert empty.status_code == 400
    assert "Type something to search for; the query is empty." in empty.content.decode()
    long = amy.get("/knowledge/", {"q": "x" * 2001})
    assert long.status_code == 400
    assert "Ensure this value has at most 2000 characters" in long.content.decode()
    wrong_kind = amy.get("/knowledge/", {"q": "badge", "kind": "gossip"})
    assert wrong_kind.status_code == 400
    assert "Select a valid choice. gossip is not one of the available choices." in wrong_kind.content.decode()


def test_an_unreachable_index_is_a_503_with_the_reason(world: World) -> None:
    port = free_port()
    with override_settings(CHROMA_URL=f"http://127.0.0.1:{port}"):
        store.clients_reset()
        try:
            response = client_for(world.amy, world.alpha).get("/knowledge/", {"q": "badge"})
        finally:
            store.clients_reset()
    assert response.status_code == 503
    error = re.search(r'data-testid="search-error">([^<]+)<', response.content.decode())
    assert error is not None
    assert f"127.0.0.1:{port}" in error.group(1)


def test_a_running_workspaces_repository_is_queued_and_shown_pending(
    world: World,
    runtime_server: Any,
    workspaces_cleanup: Cleanup,  # noqa: F811
) -> None:
    workspace = make_workspace(world, name="kb-page")
    workspaces_cleanup.append((world.alpha, workspace))
    amy = client_for(world.amy, world.alpha)
    form = amy.get("/knowledge/").content.decode()
    assert f'<option value="{workspace.pk}">kb-page</option>' in form

    bad_path = amy.post("/knowledge/repositories/", {"workspace": workspace.pk, "path": "../etc"})
    assert bad_path.status_code == 400
    field = re.search(r'<div class="field has-error">.*?</div>', bad_path.content.decode(), re.DOTALL)
    assert field is not None
    assert 'name="path"' in field.group(0)

    with schema_context(world.alpha.schema_name):
        stopped = Workspace.objects.create(name="kb-stopped", state=Workspace.State.STOPPED)
    for workspace_id in (stopped.pk, 999_999, "x"):
        other = amy.post("/knowledge/repositories/", {"workspace": workspace_id})
        assert other.status_code == 400
        assert "Select a valid choice" in other.content.decode()

    added = amy.post(
        "/knowledge/repositories/", {"workspace": workspace.pk, "name": "Warehouse code"}, follow=True
    )
    page = added.content.decode()
    assert "Warehouse code is queued for indexing; its progress shows below." in page
    assert _statuses(page) == {"Warehouse code": "pending"}
    assert 'hx-get="/knowledge/sources/" hx-trigger="every 2s"' in page  # the table refreshes itself
    assert "workspace kb-page" in page

    twice = amy.post("/knowledge/repositories/", {"workspace": workspace.pk})
    assert twice.status_code == 409
    assert "This repository is already a knowledge source (Warehouse code" in twice.content.decode()


def test_a_document_cannot_be_indexed_again_and_says_why(world: World, knowledge_index: Any) -> None:
    with schema_context(world.alpha.schema_name):
        source = document_upload(
            organization=world.alpha, actor=Actor(user=world.alice), name="onboarding.md", data=GUIDE.encode()
        ).source
    response = client_for(world.amy, world.alpha).post(
        f"/knowledge/sources/{source.pk}/reindex/", follow=True
    )
    assert "Only repositories are indexed again; upload the document again to replace it." in (
        response.content.decode()
    )
    assert client_for(world.amy, world.alpha).post("/knowledge/sources/999999/delete/").status_code == 404


def test_the_page_shows_alphas_knowledge_only(world: World, knowledge_index: Any) -> None:
    for organization, owner, text in [
        (world.alpha, world.alice, "# Alpha notes\n\nAlpha ships parcels by rail freight.\n"),
        (world.beta, world.bob, "# Beta notes\n\nBeta ships parcels by river barge.\n"),
    ]:
        with schema_context(organization.schema_name):
            document_upload(
                organization=organization,
                actor=Actor(user=owner),
                name=f"{organization.slug}-notes.md",
                data=text.encode(),
            )
    alice = client_for(world.alice, world.alpha)
    page = alice.get("/knowledge/").content.decode()
    assert _statuses(page) == {"alpha-notes.md": "ready"}
    results = alice.get("/knowledge/", {"q": "parcels shipped by river barge"}).content.decode()
    assert "rail freight" in results
    assert "barge" not in results.replace("parcels shipped by river barge", "")
    assert "beta-notes.md" not in results
