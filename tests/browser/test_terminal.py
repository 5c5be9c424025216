"""A member creates a workspace through the pages, types `echo hello` into its
terminal in headless Chromium, and sees `hello`; a second browser follows the
same terminal read-only and sees it too."""

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django_tenants.utils import schema_context
from playwright.sync_api import expect

from apps.tenancy.audit import Actor
from apps.workspaces import services
from apps.workspaces.models import Workspace
from tests.conftest import ARTIFACTS, LiveServer, World
from tests.runtime_server import RuntimeServer

pytestmark = pytest.mark.browser

SCREENSHOTS = ARTIFACTS / "screenshots"


@pytest.fixture
def workspace_name(live_db: World, runtime_server: RuntimeServer) -> Iterator[str]:
    name = f"term-{uuid.uuid4().hex[:8]}"
    yield name
    with schema_context(live_db.alpha.schema_name):
        for workspace in Workspace.objects.filter(name=name):
            services.workspace_destroy(
                actor=Actor(user=live_db.alice), organization=live_db.alpha, workspace=workspace
            )
            workspace.delete()


def _log_in(page: Any, server: LiveServer, email: str, password: str) -> None:
    page.goto(server.url(path="/login/"))
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Alpha")


def _screen_line(page: Any, text: str) -> Any:
    """A row of the terminal's screen that reads exactly `text` (xterm draws rows as DOM)."""
    return (
        page.get_by_test_id("terminal")
        .locator(".xterm-rows > div")
        .filter(has_text=re.compile(rf"^\s*{re.escape(text)}\s*$"))
    )


def test_create_a_workspace_type_echo_hello_and_see_hello(
    page: Any, browser: Any, asgi_server: LiveServer, world: World, workspace_name: str
) -> None:
    _log_in(page, asgi_server, world.alice.email, world.password)
    page.goto(asgi_server.url(world.alpha, "/workspaces/new/"))
    page.get_by_label("Name").fill(workspace_name)
    page.get_by_role("button", name="Create workspace").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(workspace_name)
    expect(page.get_by_test_id("workspace-state")).to_have_text("Running")

    status = page.get_by_test_id("terminal-status")
    expect(status).to_have_text("Connected")
    expect(page.get_by_test_id("terminal-driver")).to_have_text("You are driving")
    expect(page.get_by_test_id("terminal-viewer")).to_have_text([re.compile(r"Alice \(you\)\s*driving")])
    expect(page.get_by_role("button", name="Take control")).to_be_hidden()

    page.get_by_test_id("terminal").click()
    page.keyboard.type("echo hello")
    page.keyboard.press("Enter")
    expect(_screen_line(page, "hello")).to_have_count(1)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "terminal_echo_hello.png"), full_page=True)

    # Amy opens the same workspace in her own browser: she sees the scrollback and follows.
    other = browser.new_context(viewport={"width": 1200, "height": 800})
    try:
        amy = other.new_page()
        amy.set_default_timeout(15_000)
        _log_in(amy, asgi_server, world.amy.email, world.password)
        amy.goto(page.url)
        expect(amy.get_by_test_id("terminal-status")).to_have_text("Connected")
        expect(_screen_line(amy, "hello")).to_have_count(1)
        expect(amy.get_by_test_id("terminal-driver")).to_have_text(f"{world.alice.display_name} is driving")
        expect(page.get_by_test_id("terminal-viewer")).to_have_count(2)
        expect(amy.get_by_role("button", name="Hand over")).to_be_hidden()
        expect(amy.get_by_role("button", name="Take control")).to_be_visible()

        # Her keystrokes are refused, visibly.
        amy.get_by_test_id("terminal").click()
        amy.keyboard.type("x")
        expect(amy.get_by_test_id("terminal-message")).to_have_text(
            "You are following; take control to type."
        )

        # Alice hands over; Amy types and both see it.
        page.get_by_label("Hand over to").select_option(label=world.amy.display_name)
        page.get_by_role("button", name="Hand over").click()
        expect(amy.get_by_test_id("terminal-driver")).to_have_text("You are driving")
        expect(page.get_by_test_id("terminal-driver")).to_have_text(f"{world.amy.display_name} is driving")
        expect(page.get_by_test_id("terminal-message")).to_have_text(
            "You are following; take control to type."
        )
        amy.get_by_test_id("terminal").click()
        amy.keyboard.type("echo from-$((40+2))")
        amy.keyboard.press("Enter")
        expect(_screen_line(page, "from-42")).to_have_count(1)
        amy.screenshot(path=str(SCREENSHOTS / "terminal_follower_drives.png"), full_page=True)
    finally:
        other.close()

    # A reload reconnects to the same shell, with its scrollback shown once.
    page.reload()
    expect(status).to_have_text("Connected")
    expect(_screen_line(page, "hello")).to_have_count(1)
    expect(_screen_line(page, "from-42")).to_have_count(1)

    # The workspace stops under the open page (the idle stop, say): the terminal says so and offers Start.
    with schema_context(world.alpha.schema_name):
        workspace = Workspace.objects.get(name=workspace_name)
        services.workspace_stop(actor=Actor(user=world.alice), organization=world.alpha, workspace=workspace)
    expect(status).to_have_text("Workspace not running")
    expect(page.get_by_test_id("terminal-message")).to_have_text(
        "This workspace is not running. Start it to use the terminal."
    )
    page.get_by_role("button", name="Start the workspace").click()
    expect(page.get_by_test_id("workspace-state")).to_have_text("Running")
    expect(status).to_have_text("Connected")
    page.get_by_test_id("terminal").click()
    page.keyboard.type("echo again-$((3*3))")
    page.keyboard.press("Enter")
    expect(_screen_line(page, "again-9")).to_have_count(1)
