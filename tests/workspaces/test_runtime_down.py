"""When the runtime cannot be reached: 503 with a message that says so, and the
workspace stays exactly as it was (no row made, no state changed)."""

import pytest
from django.test import Client

from apps.workspaces.models import Workspace
from tests.api.conftest import error_of
from tests.conftest import World, client_for
from tests.workspaces.conftest import api_call, in_schema

pytestmark = pytest.mark.django_db


def test_creating_while_the_runtime_is_down_gives_503_and_leaves_no_row(
    world: World, alpha_api: Client, runtime_down: str
) -> None:
    response = api_call(alpha_api, "post", "/workspaces", {"name": "never-made"})
    assert response.status_code == 503, response.content
    error = error_of(response)
    assert error["code"] == "runtime_unavailable"
    assert "runtime is not reachable" in error["message"]
    with in_schema(world.alpha):
        assert not Workspace.objects.filter(name="never-made").exists()


@pytest.mark.parametrize(
    ("action", "state"),
    [
        ("start", Workspace.State.STOPPED),
        ("stop", Workspace.State.RUNNING),
        ("archive", Workspace.State.RUNNING),
    ],
)
def test_state_changes_while_the_runtime_is_down_give_503_and_change_nothing(
    world: World, alpha_api: Client, runtime_down: str, action: str, state: str
) -> None:
    with in_schema(world.alpha):
        workspace = Workspace.objects.create(name=f"down-{action}", state=state)
    response = api_call(alpha_api, "post", f"/workspaces/{workspace.pk}/{action}")
    assert response.status_code == 503, response.content
    assert error_of(response)["code"] == "runtime_unavailable"
    with in_schema(world.alpha):
        workspace.refresh_from_db()
    assert workspace.state == state


def test_destroy_exec_and_files_while_the_runtime_is_down_give_503(
    world: World, alpha_api: Client, runtime_down: str
) -> None:
    with in_schema(world.alpha):
        workspace = Workspace.objects.create(name="down-misc", state=Workspace.State.RUNNING)
    assert api_call(alpha_api, "delete", f"/workspaces/{workspace.pk}").status_code == 503
    assert (
        api_call(alpha_api, "post", f"/workspaces/{workspace.pk}/exec", {"command": "true"}).status_code
        == 503
    )
    assert api_call(alpha_api, "get", f"/workspaces/{workspace.pk}/files?path=").status_code == 503
    with in_schema(world.alpha):
        workspace.refresh_from_db()
    assert workspace.state == Workspace.State.RUNNING


def test_the_page_shows_the_runtime_message_with_503(world: World, runtime_down: str) -> None:
    with in_schema(world.alpha):
        workspace = Workspace.objects.create(name="down-page", state=Workspace.State.STOPPED)
    response = client_for(world.alice, world.alpha).post(f"/workspaces/{workspace.pk}/start/")
    assert response.status_code == 503
    assert "runtime is not reachable" in response.content.decode()
    with in_schema(world.alpha):
        workspace.refresh_from_db()
    assert workspace.state == Workspace.State.STOPPED
