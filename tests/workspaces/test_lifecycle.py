"""A workspace's life through the REST API on a real runtime (bwrap sandboxes):
create (running at once), exec, stop (exec refused with 409), start again,
archive (files readable, nothing writable), destroy (row kept, state deleted),
each step in the audit log."""

import pytest
from django.test import Client

from apps.tenancy.models import AuditEvent
from apps.workspaces.models import Workspace
from tests.api.conftest import error_of
from tests.conftest import World
from tests.runtime_server import RuntimeServer
from tests.workspaces.conftest import Cleanup, api_call, in_schema

pytestmark = pytest.mark.django_db


def test_create_exec_stop_start_archive_destroy(
    world: World, alpha_api: Client, runtime_server: RuntimeServer, workspaces_cleanup: Cleanup
) -> None:
    created = api_call(
        alpha_api,
        "post",
        "/workspaces",
        {"name": "life", "template": "python", "memory_mb": 512, "disk_mb": 256, "env": {"GREETING": "hej"}},
    )
    assert created.status_code == 201, created.content
    body = created.json()
    workspace_id = body["id"]
    with in_schema(world.alpha):
        workspaces_cleanup.append((world.alpha, Workspace.objects.get(pk=workspace_id)))
    assert body["state"] == "running"
    assert body["started_at"] is not None
    assert body["env_names"] == ["GREETING"]
    assert "hej" not in created.content.decode()

    # The sandbox exists on the runtime under Alpha's schema name, running.
    info = runtime_server.client().get_sandbox(world.alpha.schema_name, f"ws-{workspace_id}")
    assert info.running
    assert info.memory_bytes == 512 * 1024 * 1024

    ran = api_call(
        alpha_api, "post", f"/workspaces/{workspace_id}/exec", {"command": "echo $GREETING; pwd; exit 3"}
    )
    assert ran.status_code == 200, ran.content
    assert ran.json()["stdout"] == "hej\n/workspace\n"
    assert ran.json()["exit_code"] == 3

    stopped = api_call(alpha_api, "post", f"/workspaces/{workspace_id}/stop")
    assert stopped.json()["state"] == "stopped"
    assert stopped.json()["stopped_at"] is not None
    refused = api_call(alpha_api, "post", f"/workspaces/{workspace_id}/exec", {"command": "echo hi"})
    assert refused.status_code == 409
    assert error_of(refused)["code"] == "workspace_not_running"
    assert not runtime_server.client().get_sandbox(world.alpha.schema_name, f"ws-{workspace_id}").running

    # Files outlive a stop and a start.
    write = api_call(
        alpha_api, "put", f"/workspaces/{workspace_id}/files?path=notes/todo.txt", {"content": "x\n"}
    )
    assert write.status_code == 200, write.content
    started = api_call(alpha_api, "post", f"/workspaces/{workspace_id}/start")
    assert started.json()["state"] == "running"
    cat = api_call(alpha_api, "post", f"/workspaces/{workspace_id}/exec", {"argv": ["cat", "notes/todo.txt"]})
    assert cat.json()["stdout"] == "x\n"

    archived = api_call(alpha_api, "post", f"/workspaces/{workspace_id}/archive")
    assert archived.json()["state"] == "archived"
    assert archived.json()["archived_at"] is not None
    read = api_call(alpha_api, "get", f"/workspaces/{workspace_id}/files?path=notes/todo.txt")
    assert read.status_code == 200
    assert read.json()["content"] == "x\n"
    readonly = api_call(
        alpha_api, "put", f"/workspaces/{workspace_id}/files?path=notes/todo.txt", {"content": "y"}
    )
    assert readonly.status_code == 409
    assert error_of(readonly)["code"] == "workspace_archived"
    assert api_call(alpha_api, "post", f"/workspaces/{workspace_id}/start").status_code == 409

    destroyed = api_call(alpha_api, "delete", f"/workspaces/{workspace_id}")
    assert destroyed.status_code == 200
    assert destroyed.json()["state"] == "deleted"
    assert destroyed.json()["deleted_at"] is not None
    # Gone from the runtime, kept in our records and out of the default list.
    remaining = runtime_server.client().list_sandboxes(world.alpha.schema_name)
    assert f"ws-{workspace_id}" not in {item.sandbox_id for item in remaining}
    assert api_call(alpha_api, "get", f"/workspaces/{workspace_id}").json()["state"] == "deleted"
    listed = [item["id"] for item in api_call(alpha_api, "get", "/workspaces").json()["results"]]
    assert workspace_id not in listed
    deleted = [
        item["id"] for item in api_call(alpha_api, "get", "/workspaces?state=deleted").json()["results"]
    ]
    assert workspace_id in deleted

    actions = list(
        AuditEvent.objects.filter(
            organization=world.alpha, target_type="workspaces.Workspace", target_id=str(workspace_id)
        )
        .order_by("created_at", "pk")
        .values_list("action", flat=True)
    )
    assert actions == [
        "workspace.created",
        "workspace.stopped",
        "workspace.started",
        "workspace.archived",
        "workspace.destroyed",
    ]


def test_a_name_is_free_again_once_its_workspace_is_destroyed(
    world: World, alpha_api: Client, runtime_server: RuntimeServer, workspaces_cleanup: Cleanup
) -> None:
    first = api_call(alpha_api, "post", "/workspaces", {"name": "reused", "start": False})
    assert first.status_code == 201
    assert first.json()["state"] == "stopped"
    taken = api_call(alpha_api, "post", "/workspaces", {"name": "reused", "start": False})
    assert taken.status_code == 409
    assert error_of(taken)["fields"] == {"name": ["A workspace with this name exists; choose another."]}
    api_call(alpha_api, "delete", f"/workspaces/{first.json()['id']}")
    again = api_call(alpha_api, "post", "/workspaces", {"name": "reused", "start": False})
    assert again.status_code == 201
    with in_schema(world.alpha):
        workspaces_cleanup.append((world.alpha, Workspace.objects.get(pk=again.json()["id"])))


def test_a_workspace_made_while_the_runtime_was_away_gets_its_sandbox_on_first_start(
    world: World, alpha_api: Client, runtime_server: RuntimeServer, workspaces_cleanup: Cleanup
) -> None:
    from apps.tenancy.audit import Actor
    from apps.workspaces import services

    with in_schema(world.alpha):
        workspace = services.workspace_create(
            actor=Actor(user=world.alice), organization=world.alpha, name="seeded", provision=False
        )
        workspaces_cleanup.append((world.alpha, workspace))
    assert workspace.state == "provisioning"
    files = api_call(alpha_api, "get", f"/workspaces/{workspace.pk}/files?path=")
    assert files.status_code == 409
    started = api_call(alpha_api, "post", f"/workspaces/{workspace.pk}/start")
    assert started.status_code == 200, started.content
    assert started.json()["state"] == "running"
    ran = api_call(alpha_api, "post", f"/workspaces/{workspace.pk}/exec", {"command": "echo ready"})
    assert ran.json()["stdout"] == "ready\n"


def test_viewers_see_workspaces_but_cannot_operate_them(world: World, running: Workspace) -> None:
    from apps.tenancy.models import Membership
    from tests.conftest import client_for
    from tests.factories import make_user

    viewer = make_user("vera@alpha.test", "Vera")
    Membership.objects.create(user=viewer, organization=world.alpha, role=Membership.Role.VIEWER)
    client = client_for(viewer, world.alpha)
    assert client.get(f"/api/v1/workspaces/{running.pk}").status_code == 200
    assert client.get(f"/api/v1/workspaces/{running.pk}/files?path=").status_code == 200
    exec_response = api_call(client, "post", f"/workspaces/{running.pk}/exec", {"command": "id"})
    assert exec_response.status_code == 403
    assert error_of(exec_response)["code"] == "role_forbidden"
    assert api_call(client, "post", f"/workspaces/{running.pk}/stop").status_code == 403
    assert api_call(client, "delete", f"/workspaces/{running.pk}").status_code == 403
    # A member operates but may not destroy (managers do).
    member = client_for(world.amy, world.alpha)
    assert api_call(member, "post", f"/workspaces/{running.pk}/exec", {"command": "true"}).status_code == 200
    assert api_call(member, "delete", f"/workspaces/{running.pk}").status_code == 403
