"""A member creates a workspace from the page, sees it running, browses its file
tree (directories load as they open), opens a file, edits and saves it; then
stops the workspace."""

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from django_tenants.utils import schema_context
from playwright.sync_api import expect

from apps.tenancy.audit import Actor
from apps.tenancy.models import AuditEvent
from apps.workspaces import services
from apps.workspaces.models import Workspace
from apps.workspaces.runtime import runtime_client
from tests.conftest import LiveServer, World
from tests.runtime_server import RuntimeServer

pytestmark = pytest.mark.browser

NAME = "Browser workspace"


@pytest.fixture
def cleanup(live_db: World, runtime_server: RuntimeServer) -> Iterator[None]:
    yield
    with schema_context(live_db.alpha.schema_name):
        for workspace in Workspace.objects.filter(name=NAME):
            runtime_client().destroy_sandbox(live_db.alpha.schema_name, workspace.sandbox_id)
            with connection.cursor() as cursor:
                cursor.execute(
                    f"DELETE FROM {AuditEvent._meta.db_table} WHERE organization_id = %s"  # noqa: S608
                    " AND target_type = 'workspaces.Workspace' AND target_id = %s",
                    [live_db.alpha.pk, str(workspace.pk)],
                )
            workspace.delete()


def test_create_a_workspace_browse_its_files_and_save_one(
    page: Any, asgi_server: LiveServer, world: World, runtime_server: RuntimeServer, cleanup: None
) -> None:
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(asgi_server.url(path="/login/"))
    page.get_by_label("Email").fill(world.alice.email)
    page.get_by_label("Password").fill(world.password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Alpha")

    page.get_by_role("navigation", name="Organization").get_by_role("link", name="Workspaces").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Workspaces")
    page.get_by_role("link", name="New workspace").click()
    page.get_by_label("Name").fill(NAME)
    page.get_by_label("Python — Debian userland with Python 3", exact=False).check()
    page.get_by_label("Memory (MB)").fill("512")
    page.get_by_label("Disk (MB)").fill("256")
    page.get_by_role("button", name="Create workspace").click()

    expect(page.get_by_role("heading", level=1)).to_have_text(NAME)
    expect(page.get_by_test_id("workspace-state")).to_have_text("Running")
    expect(page.get_by_text(f"Workspace {NAME} is running.")).to_be_visible()

    # Something to browse: files an agent might have written.
    with schema_context(world.alpha.schema_name):
        workspace = Workspace.objects.get(name=NAME)
        services.workspace_file_write(
            actor=Actor(user=world.alice),
            workspace=workspace,
            path="src/app/main.py",
            data=b"print('hello')\n",
        )
    page.reload()
    tree = page.get_by_test_id("file-tree")
    tree.get_by_text("src/").click()
    tree.get_by_text("app/").click()
    tree.get_by_role("link", name="main.py").click()

    editor = page.get_by_label("Content of src/app/main.py")
    expect(editor).to_have_value("print('hello')\n")
    editor.fill("print('hello, browser')\n")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_text("Saved src/app/main.py.")).to_be_visible()
    expect(page.get_by_label("Content of src/app/main.py")).to_have_value("print('hello, browser')\n")
    ran = runtime_client().exec(
        world.alpha.schema_name, workspace.sandbox_id, command="python3 src/app/main.py"
    )
    assert ran.stdout == b"hello, browser\n"

    page.get_by_role("link", name=NAME).click()
    page.get_by_role("button", name="Stop").click()
    expect(page.get_by_test_id("workspace-state")).to_have_text("Stopped")
