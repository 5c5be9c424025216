"""Adding knowledge through the REST API with API keys: uploading a document (multipart)
stores it and search finds it; a workspace's repository is queued (202) and, with the
real Celery worker, indexed to ready with its progress and last commit, then indexed
again after a commit; bad input is a 400 on its field, another organization's workspace
a 404, conflicts a 409 with their code, and only knowledge.manage may add."""

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test import Client, override_settings
from django_tenants.utils import schema_context

from apps.knowledge.models import KnowledgeChunk, KnowledgeSource
from apps.tenancy.audit import Actor
from apps.tenancy.models import AuditEvent, Organization
from apps.workspaces import services as workspace_services
from apps.workspaces.models import Workspace
from tests.api.conftest import error_of, key_client, new_key, send_json
from tests.conftest import World, wait_for
from tests.workspaces.conftest import Cleanup, make_workspace, workspaces_cleanup  # noqa: F401

API = "/api/v1"
GUIDE = b"# Returns\n\nParcels may be returned within thirty days.\n\n## Damaged\n\nSend a photo first.\n"
IDENTITY = {
    "GIT_AUTHOR_NAME": "F",
    "GIT_AUTHOR_EMAIL": "f@x.test",
    "GIT_COMMITTER_NAME": "F",
    "GIT_COMMITTER_EMAIL": "f@x.test",
}


def _upload(
    client: Client, name: str, data: bytes, content_type: str = "text/markdown", **fields: Any
) -> Any:
    return client.post(
        f"{API}/knowledge/sources",
        {"file": SimpleUploadedFile(name, data, content_type=content_type), **fields},
    )


@pytest.fixture
def alpha_key(world: World) -> Client:
    _, raw = new_key(world, ["knowledge:write"], name="knowledge writer")
    return key_client(raw)


@pytest.mark.django_db
def test_a_document_uploaded_with_a_key_is_stored_and_found(
    world: World, alpha_key: Client, knowledge_index: Any
) -> None:
    created = _upload(alpha_key, "returns.md", GUIDE)
    assert created.status_code == 201, created.content
    body = created.json()
    assert {key: body[key] for key in ("kind", "name", "uri", "media_type", "status", "progress_done")} == {
        "kind": "document",
        "name": "returns.md",
        "uri": "returns.md",
        "media_type": "text/markdown",
        "status": "ready",
        "progress_done": 1,
    }
    assert body["chunk_count"] >= 2

    again = _upload(alpha_key, "returns.md", GUIDE)
    assert again.status_code == 201
    assert again.json()["id"] == body["id"]

    found = alpha_key.get(f"{API}/knowledge/search", {"q": "how long may parcels be returned"})
    assert found.status_code == 200
    top = found.json()["results"][0]
    assert (top["source_id"], top["path"]) == (body["id"], "returns.md")
    assert top["location"].startswith("returns.md:")


@pytest.mark.django_db
def test_bad_uploads_and_bodies_are_refused_on_their_field(world: World, alpha_key: Client) -> None:
    cases = [
        (_upload(alpha_key, "photo.png", b"\x89PNG", "image/png"), "file", "unsupported_type"),
        (_upload(alpha_key, "empty.md", b""), "file", "empty"),
        (_upload(alpha_key, "latin.txt", "é".encode("latin-1"), "text/plain"), "file", "undecodable"),
        (_upload(alpha_key, "x.md", b"# x\n\ny\n", kind="repository"), "kind", "invalid"),
        (alpha_key.post(f"{API}/knowledge/sources", {"kind": "document"}), "file", "invalid"),
        (send_json(alpha_key, "post", "/knowledge/sources", {"kind": "document"}), "kind", "invalid"),
        (
            send_json(alpha_key, "post", "/knowledge/sources", {"kind": "repository"}),
            "workspace_id",
            "invalid",
        ),
        (
            send_json(
                alpha_key, "post", "/knowledge/sources", {"kind": "repository", "workspace_id": 1, "x": 1}
            ),
            "x",
            "invalid",
        ),
        (
            send_json(alpha_key, "post", "/knowledge/sources", {"kind": "note", "workspace_id": 1}),
            "kind",
            "invalid",
        ),
    ]
    for response, field, code in cases:
        assert response.status_code == 400, response.content
        error = error_of(response)
        assert field in error["fields"], error
        assert error["code"] == code, error
    with override_settings(KNOWLEDGE_MAX_UPLOAD_BYTES=1024 * 1024):
        big = _upload(alpha_key, "big.md", b"a" * (2 * 1024 * 1024))
    assert big.status_code == 400
    assert error_of(big)["message"].startswith("big.md is 2 MB, over the limit of 1 MB for a document")
    with schema_context(world.alpha.schema_name):
        assert not KnowledgeSource.objects.exists()


@pytest.mark.django_db
def test_only_knowledge_managers_may_add(world: World) -> None:
    _, raw = new_key(world, ["knowledge:read"], name="reader")
    reader = key_client(raw)
    refused = _upload(reader, "returns.md", GUIDE)
    assert refused.status_code == 403
    assert error_of(refused)["code"] == "missing_scope"
    assert reader.post(f"{API}/knowledge/sources/1/reindex").status_code == 403
    assert reader.get(f"{API}/knowledge/sources").status_code == 200


@pytest.mark.django_db
def test_repositories_are_queued_and_conflicts_and_strangers_are_refused(
    world: World,
    alpha_key: Client,
    runtime_server: Any,
    workspaces_cleanup: Cleanup,  # noqa: F811
    knowledge_index: Any,
) -> None:
    running = make_workspace(world, name="kb-api")
    workspaces_cleanup.append((world.alpha, running))
    queued = send_json(
        alpha_key, "post", "/knowledge/sources", {"kind": "repository", "workspace_id": running.pk}
    )
    assert queued.status_code == 202, queued.content
    assert {key: queued.json()[key] for key in ("kind", "name", "workspace", "status")} == {
        "kind": "repository",
        "name": "kb-api",
        "workspace": running.pk,
        "status": "pending",
    }
    twice = send_json(
        alpha_key, "post", "/knowledge/sources", {"kind": "repository", "workspace_id": running.pk}
    )
    assert twice.status_code == 409
    assert error_of(twice)["code"] == "source_exists"
    bad_path = send_json(
        alpha_key,
        "post",
        "/knowledge/sources",
        {"kind": "repository", "workspace_id": running.pk, "path": "../x"},
    )
    assert bad_path.status_code == 400
    assert "path" in error_of(bad_path)["fields"]

    stopped = make_workspace(world, name="kb-api-stopped", start=False)
    workspaces_cleanup.append((world.alpha, stopped))
    not_running = send_json(
        alpha_key, "post", "/knowledge/sources", {"kind": "repository", "workspace_id": stopped.pk}
    )
    assert not_running.status_code == 409
    assert error_of(not_running)["code"] == "workspace_not_running"

    with schema_context(world.alpha.schema_name):
        alpha_ids = set(Workspace.objects.values_list("pk", flat=True))
    with schema_context(world.beta.schema_name):
        beta_workspace = Workspace.objects.create(name="beta-0", state=Workspace.State.RUNNING)
        while beta_workspace.pk in alpha_ids:
            beta_workspace = Workspace.objects.create(name=f"beta-{beta_workspace.pk}", state="running")
    stranger = send_json(
        alpha_key, "post", "/knowledge/sources", {"kind": "repository", "workspace_id": beta_workspace.pk}
    )
    assert stranger.status_code == 404

    document = _upload(alpha_key, "returns.md", GUIDE).json()
    not_a_repository = alpha_key.post(f"{API}/knowledge/sources/{document['id']}/reindex")
    assert not_a_repository.status_code == 409
    assert error_of(not_a_repository)["code"] == "not_reindexable"
    assert alpha_key.post(f"{API}/knowledge/sources/999999/reindex").status_code == 404
    again = alpha_key.post(f"{API}/knowledge/sources/{queued.json()['id']}/reindex")
    assert again.status_code == 202
    assert again.json()["status"] == "pending"


# With the real worker -------------------------------------------------------------------------------


@pytest.fixture
def committed_repo(live_db: World, runtime_server: Any) -> Iterator[tuple[Workspace, str]]:
    """A running workspace of Alpha with a committed repository, committed to the database
    (the worker sees it); its sandbox, sources and audit rows removed afterwards."""
    workspace = make_workspace(live_db, name="kb-worker")
    _, raw = new_key(live_db, ["knowledge:write"], name="kb worker key")
    with schema_context(live_db.alpha.schema_name):
        _sh(
            workspace,
            live_db,
            "mkdir -p app && printf 'def ship(order):\\n    return order.id\\n' > app/ship.py",
        )
        _sh(workspace, live_db, "printf '# Shipping\\n\\nOrders ship daily.\\n' > README.md")
        _sh(workspace, live_db, "git init -q -b main && git add -A && git commit -qm first")
    yield workspace, raw
    with schema_context(live_db.alpha.schema_name):
        KnowledgeSource.objects.filter(workspace=workspace).delete()
        workspace_services.workspace_destroy(
            actor=Actor(user=live_db.alice), organization=live_db.alpha, workspace=workspace
        )
        Workspace.objects.filter(pk=workspace.pk).delete()
    _forget_audit(live_db.alpha)
    from apps.tenancy.models import ApiKey

    ApiKey.objects.filter(organization=live_db.alpha, name="kb worker key").delete()


def _sh(workspace: Workspace, world: World, command: str) -> str:
    outcome = workspace_services.workspace_exec(
        actor=Actor(user=world.alice), workspace=workspace, command=command, env=IDENTITY
    )
    assert outcome.exit_code == 0, outcome.stderr
    return outcome.stdout


def _forget_audit(organization: Organization) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {AuditEvent._meta.db_table} WHERE organization_id = %s"  # noqa: S608 (a model's table)
            " AND (action LIKE 'knowledge.%%' OR action LIKE 'workspace.%%' OR action LIKE 'api_key.%%')",
            [organization.pk],
        )


def _source(world: World, source_id: int) -> KnowledgeSource:
    with schema_context(world.alpha.schema_name):
        return KnowledgeSource.objects.get(pk=source_id)


def test_the_worker_indexes_a_queued_repository_and_again_after_a_commit(
    live_db: World, celery_worker: subprocess.Popen[bytes], committed_repo: tuple[Workspace, str]
) -> None:
    workspace, raw = committed_repo
    client = key_client(raw)
    created = send_json(
        client, "post", "/knowledge/sources", {"kind": "repository", "workspace_id": workspace.pk}
    )
    assert created.status_code == 202, created.content
    source_id = created.json()["id"]

    ready = wait_for(
        lambda: (source := _source(live_db, source_id)).status in {"ready", "failed"} and source, 60
    )
    assert (ready.status, ready.error) == ("ready", "")
    with schema_context(live_db.alpha.schema_name):
        head = _sh(workspace, live_db, "git rev-parse HEAD").strip()
        assert ready.last_commit == head
        assert ready.progress_done == ready.progress_total == 2
        assert set(KnowledgeChunk.objects.filter(source_id=source_id).values_list("path", flat=True)) == {
            "app/ship.py",
            "README.md",
        }
        _sh(
            workspace,
            live_db,
            "printf 'def ship(order):\\n    return order.number\\n' > app/ship.py && git commit -qam two",
        )
        second = _sh(workspace, live_db, "git rev-parse HEAD").strip()

    listed = client.get(f"{API}/knowledge/sources/{source_id}").json()
    assert (listed["status"], listed["last_commit"]) == ("ready", head)
    assert client.post(f"{API}/knowledge/sources/{source_id}/reindex").status_code == 202
    wait_for(lambda: _source(live_db, source_id).last_commit == second, 60)
    again = _source(live_db, source_id)
    assert again.status == "ready"
    assert again.progress_total == 1  # only the edited file
    with schema_context(live_db.alpha.schema_name):
        current = KnowledgeChunk.objects.get(
            source_id=source_id, path="app/ship.py", superseded_at__isnull=True
        )
        assert (current.version, current.commit) == (2, second)


def test_a_large_document_is_stored_by_the_worker(
    live_db: World, celery_worker: subprocess.Popen[bytes]
) -> None:
    api_key, raw = new_key(live_db, ["knowledge:write"], name="kb large document key")
    sections = "".join(
        f"## Depot {number}\n\nDepot {number} opens at {number % 12 + 1} o'clock.\n\n"
        for number in range(320)
    )
    try:
        response = _upload(key_client(raw), "depots.md", f"# Depots\n\n{sections}".encode())
        assert response.status_code == 202, response.content
        assert response.json()["status"] == "pending"
        source_id = response.json()["id"]
        ready = wait_for(
            lambda: (source := _source(live_db, source_id)).status in {"ready", "failed"} and source, 90
        )
        assert (ready.status, ready.error, ready.progress_done, ready.progress_total) == ("ready", "", 1, 1)
        assert ready.chunk_count > 300
        with schema_context(live_db.alpha.schema_name):
            assert (
                KnowledgeChunk.objects.filter(source_id=source_id, path="depots.md").count()
                == ready.chunk_count
            )
    finally:
        with schema_context(live_db.alpha.schema_name):
            KnowledgeSource.objects.filter(name="depots.md").delete()
        _forget_audit(live_db.alpha)
        api_key.delete()
