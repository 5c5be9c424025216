"""An owner opens Agent tools from the sidebar, adds the organization's MCP server (the
loopback MCP fake) with a token header, tests its connection and sees the tools runs
will get under their gateway names, then deletes it after confirming."""

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from django_tenants.utils import schema_context
from playwright.sync_api import expect

from apps.agents.models import OrganizationTool
from apps.tenancy.models import AuditEvent
from tests.conftest import LiveServer, World
from tests.fakes.mcp_server import FakeMCP, mcp_server

pytestmark = pytest.mark.browser


@pytest.fixture
def mcp() -> Iterator[FakeMCP]:
    with mcp_server() as fake:
        yield fake


@pytest.fixture
def cleanup(live_db: World) -> Iterator[None]:
    yield
    with schema_context(live_db.alpha.schema_name):
        OrganizationTool.objects.filter(name="repo").delete()
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {AuditEvent._meta.db_table} WHERE organization_id = %s"  # noqa: S608
            " AND action LIKE 'agent_tool.%%'",
            [live_db.alpha.pk],
        )


def test_add_an_mcp_server_test_it_and_delete_it(
    page: Any, asgi_server: LiveServer, world: World, mcp: FakeMCP, cleanup: None
) -> None:
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(asgi_server.url(path="/login/"))
    page.get_by_label("Email").fill(world.alice.email)
    page.get_by_label("Password").fill(world.password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Alpha")

    page.get_by_role("navigation", name="Organization").get_by_role("link", name="Agent tools").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Agent tools")
    expect(page.get_by_text("No tools yet")).to_be_visible()

    page.get_by_label("Name").fill("repo")
    page.get_by_label("Kind").select_option("mcp")
    page.get_by_label("URL").fill(mcp.url)
    page.get_by_label("Headers").fill("Authorization: Bearer browser-token")
    page.get_by_role("button", name="Add tool").click()

    expect(page.get_by_role("status").first).to_contain_text("The tool repo was added")
    expect(page.get_by_role("heading", level=1)).to_have_text("repo")
    expect(page.get_by_text("Bearer browser-token")).to_have_count(0)

    page.get_by_role("button", name="Test connection").click()
    expect(page.get_by_test_id("test-ok")).to_have_text("Connected: 5 tools listed.")
    expect(page.get_by_test_id("discovered-tool").filter(has_text="repo__repo_search")).to_be_visible()
    assert mcp.requests[0].headers["authorization"] == "Bearer browser-token"

    page.get_by_role("button", name="Delete repo").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Agent tools")
    expect(page.get_by_text("No tools yet")).to_be_visible()
