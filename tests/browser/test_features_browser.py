"""The terminal when the plan loses it, in headless Chromium: an open terminal says why
it stopped (and does not retry), and the reloaded page shows the reason in its place."""

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import override_settings
from django_tenants.utils import schema_context
from playwright.sync_api import expect

from apps.billing.plans import billing_account_for
from apps.billing.quotas import quota_snapshots_clear
from apps.tenancy.audit import Actor
from apps.workspaces import services
from apps.workspaces.models import Workspace
from tests.conftest import LiveServer, World
from tests.runtime_server import RuntimeServer

pytestmark = pytest.mark.browser


@pytest.fixture
def running_workspace(live_db: World, runtime_server: RuntimeServer) -> Iterator[Workspace]:
    with schema_context(live_db.alpha.schema_name):
        workspace = services.workspace_create(
            actor=Actor(user=live_db.alice), organization=live_db.alpha, name=f"plan-{uuid.uuid4().hex[:8]}"
        )
    yield workspace
    with schema_context(live_db.alpha.schema_name):
        services.workspace_destroy(
            actor=Actor(user=live_db.alice),
            organization=live_db.alpha,
            workspace=Workspace.objects.get(pk=workspace.pk),
        )
        Workspace.objects.filter(pk=workspace.pk).delete()


@pytest.fixture
def terminal_override(live_db: World) -> Iterator[Any]:
    """Sets Alpha's terminal override (committed); Alpha's overrides as they were afterwards."""
    saved = dict(billing_account_for(live_db.alpha).feature_overrides or {})

    def set_terminal(enabled: bool) -> None:
        account = billing_account_for(live_db.alpha)
        account.feature_overrides = {**saved, "terminal": enabled}
        account.save(update_fields=["feature_overrides", "updated_at"])
        quota_snapshots_clear()

    yield set_terminal
    account = billing_account_for(live_db.alpha)
    account.feature_overrides = saved
    account.save(update_fields=["feature_overrides", "updated_at"])
    quota_snapshots_clear()


def test_the_terminal_says_the_plan_lacks_it(
    page: Any,
    asgi_server: LiveServer,
    world: World,
    running_workspace: Workspace,
    terminal_override: Any,
) -> None:
    page.goto(asgi_server.url(path="/login/"))
    page.get_by_label("Email").fill(world.alice.email)
    page.get_by_label("Password").fill(world.password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Alpha")

    with override_settings(WORKSPACES_TERMINAL_HEARTBEAT_SECONDS=0.3):
        page.goto(asgi_server.url(world.alpha, f"/workspaces/{running_workspace.pk}/"))
        status = page.get_by_test_id("terminal-status")
        expect(status).to_have_text("Connected")

        terminal_override(False)
        expect(status).to_have_text("Not in your plan")
        message = page.get_by_test_id("terminal-message")
        expect(message).to_contain_text("Terminal needs the 'terminal' feature")
        expect(message).to_contain_text("turned off for Alpha")

    page.reload()
    refusal = page.get_by_test_id("terminal-not-in-plan")
    expect(refusal).to_contain_text("Terminal needs the 'terminal' feature")
    expect(page.get_by_test_id("terminal")).to_have_count(0)

    terminal_override(True)
    page.reload()
    expect(page.get_by_test_id("terminal-status")).to_have_text("Connected")
