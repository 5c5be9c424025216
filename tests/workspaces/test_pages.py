"""The workspace pages: list, create form (errors on their fields), a workspace's
page with its actions and terminal, the htmx file tree and the file editor; viewers
see everything and operate nothing."""

import pytest

from apps.tenancy.models import Membership
from apps.workspaces.models import Workspace
from tests.conftest import World, client_for
from tests.factories import make_user
from tests.runtime_server import RuntimeServer
from tests.workspaces.conftest import Cleanup, in_schema

pytestmark = pytest.mark.django_db


def test_the_create_form_offers_templates_and_shows_errors_on_their_fields(world: World) -> None:
    alice = client_for(world.alice, world.alpha)
    form = alice.get("/workspaces/new/")
    assert form.status_code == 200
    page = form.content.decode()
    assert "Debian userland with Python 3" in page  # the python template's description
    assert "At most 8192 MB" in page
    bad = alice.post(
        "/workspaces/new/",
        {"name": "from-form", "template": "base", "cpus": "1", "memory_mb": "512", "disk_mb": "256",
         "pids": "128", "idle_timeout_seconds": "600", "network_allow": "github.com", "env": ""},
    )  # fmt: skip
    assert bad.status_code == 400
    assert "a port is required" in bad.content.decode()
    with in_schema(world.alpha):
        assert not Workspace.objects.filter(name="from-form").exists()


def test_create_from_the_form_then_browse_and_edit_files(
    world: World, runtime_server: RuntimeServer, workspaces_cleanup: Cleanup
) -> None:
    alice = client_for(world.alice, world.alpha)
    created = alice.post(
        "/workspaces/new/",
        {"name": "from-form", "template": "base", "cpus": "1", "memory_mb": "512", "disk_mb": "256",
         "pids": "128", "idle_timeout_seconds": "600", "network_allow": "", "env": "MODE=dev", "start": "on"},
    )  # fmt: skip
    assert created.status_code == 302, created.content.decode()[:2000]
    with in_schema(world.alpha):
        workspace = Workspace.objects.get(name="from-form")
    workspaces_cleanup.append((world.alpha, workspace))
    assert created["Location"] == f"/workspaces/{workspace.pk}/"

    detail = alice.get(created["Location"]).content.decode()
    assert 'data-testid="workspace-state">Running' in detail
    assert ">Stop</button>" in detail
    assert "data-terminal" in detail  # the terminal partial, for a running workspace
    assert "<code>MODE</code>" in detail
    assert "dev" not in detail.split("<code>MODE</code>")[1][:20]

    with in_schema(world.alpha):
        from apps.tenancy.audit import Actor
        from apps.workspaces import services

        services.workspace_file_write(
            actor=Actor(user=world.alice), workspace=workspace, path="docs/guide.md", data=b"# Guide\n"
        )
    tree = alice.get(f"/workspaces/{workspace.pk}/tree/?path=").content.decode()
    assert 'data-path="docs"' in tree
    assert "hx-get" in tree
    subtree = alice.get(f"/workspaces/{workspace.pk}/tree/?path=docs").content.decode()
    assert 'data-path="docs/guide.md"' in subtree

    viewed = alice.get(f"/workspaces/{workspace.pk}/file/?path=docs/guide.md")
    assert viewed.status_code == 200
    assert "# Guide" in viewed.content.decode()
    saved = alice.post(
        f"/workspaces/{workspace.pk}/file/?path=docs/guide.md", {"content": "# Guide\r\nv2\r\n"}
    )
    assert saved.status_code == 302
    assert "v2" in alice.get(f"/workspaces/{workspace.pk}/file/?path=docs/guide.md").content.decode()

    escape = alice.get(f"/workspaces/{workspace.pk}/file/?path=../../etc/passwd")
    assert escape.status_code == 400
    assert "root:" not in escape.content.decode()

    stopped = alice.post(f"/workspaces/{workspace.pk}/stop/")
    assert stopped.status_code == 302
    with in_schema(world.alpha):
        workspace.refresh_from_db()
    assert workspace.state == "stopped"


def test_viewers_see_but_cannot_operate(world: World, running: Workspace) -> None:
    viewer = make_user("vic@alpha.test", "Vic")
    Membership.objects.create(user=viewer, organization=world.alpha, role=Membership.Role.VIEWER)
    client = client_for(viewer, world.alpha)
    listing = client.get("/workspaces/").content.decode()
    assert running.name in listing
    assert "New workspace" not in listing
    detail = client.get(f"/workspaces/{running.pk}/").content.decode()
    assert ">Stop</button>" not in detail
    assert ">Destroy</button>" not in detail
    assert 'data-can-drive="false"' in detail
    assert client.post(f"/workspaces/{running.pk}/stop/").status_code == 403
    assert client.get("/workspaces/new/").status_code == 403
    assert client.post(f"/workspaces/{running.pk}/file/?path=x.txt", {"content": "x"}).status_code == 403
    with in_schema(world.alpha):
        running.refresh_from_db()
    assert running.state == "running"
