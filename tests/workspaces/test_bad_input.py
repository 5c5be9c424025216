"""Bad input to the workspace API gets a 400 naming the field, before anything is made:
an unknown template, resources above this server's limits, an invalid allow-list
entry, a bad environment variable name. None of these reach the runtime."""

from typing import Any

import pytest
from django.test import Client

from apps.workspaces.models import Workspace
from tests.api.conftest import error_of
from tests.conftest import World
from tests.workspaces.conftest import api_call, in_schema

pytestmark = pytest.mark.django_db


def _create(client: Client, **fields: Any) -> Any:
    return api_call(client, "post", "/workspaces", {"name": "bad-input", **fields})


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"template": "windows-xp"}, "template", "Unknown template 'windows-xp'"),
        ({"cpus": 64}, "cpus", "between 0.1 and 4"),
        ({"memory_mb": 10**7}, "memory_mb", "between 64 and 8192 MB"),
        ({"disk_mb": 10**8}, "disk_mb", "MB"),
        ({"pids": 10**6}, "pids", "processes"),
        ({"idle_timeout_seconds": 5}, "idle_timeout_seconds", "seconds"),
        ({"network_allow": ["github.com"]}, "network_allow", "a port is required"),
        ({"network_allow": ["*.example.com:443"]}, "network_allow", "wildcards are not supported"),
        ({"network_allow": ["https://github.com/x:443"]}, "network_allow", "without a scheme"),
        ({"env": {"1BAD": "x"}}, "env", "not a valid environment variable name"),
        ({"env": {"PATH": "/evil"}}, "env", "set by the platform"),
        ({"name": "../etc"}, "name", "Give the workspace a name"),
    ],
)
def test_bad_input_gets_a_400_naming_the_field_and_makes_nothing(
    world: World, alpha_api: Client, fields: dict[str, Any], field: str, says: str
) -> None:
    response = _create(alpha_api, **fields)
    assert response.status_code == 400, response.content
    error = error_of(response)
    assert field in error["fields"], error
    assert says in " ".join(error["fields"][field]), error
    with in_schema(world.alpha):
        assert not Workspace.objects.filter(name__in=["bad-input", "../etc"]).exists()


def test_an_unknown_field_and_a_wrong_type_are_refused(alpha_api: Client) -> None:
    unknown = _create(alpha_api, flavour="large")
    assert unknown.status_code == 400
    assert error_of(unknown)["fields"] == {"flavour": ["Unknown field."]}
    wrong = _create(alpha_api, memory_mb="lots")
    assert wrong.status_code == 400
    assert "memory_mb" in error_of(wrong)["fields"]


def test_exec_needs_exactly_one_of_command_and_argv(world: World, alpha_api: Client) -> None:
    with in_schema(world.alpha):
        workspace = Workspace.objects.create(name="exec-shape", state=Workspace.State.RUNNING)
    both = api_call(
        alpha_api, "post", f"/workspaces/{workspace.pk}/exec", {"command": "true", "argv": ["true"]}
    )
    assert both.status_code == 400
    assert "command" in error_of(both)["fields"]
    timeout = api_call(
        alpha_api, "post", f"/workspaces/{workspace.pk}/exec", {"command": "true", "timeout": 0}
    )
    assert timeout.status_code == 400
    assert "timeout" in error_of(timeout)["fields"]


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("../outside", "may not leave the workspace"),
        ("a/../../outside", "may not leave the workspace"),
        ("/etc/passwd", "not an absolute path"),
    ],
)
def test_paths_that_leave_the_workspace_are_refused_before_the_runtime(
    world: World, alpha_api: Client, path: str, says: str
) -> None:
    with in_schema(world.alpha):
        workspace = Workspace.objects.create(name="paths", state=Workspace.State.STOPPED)
    for method in ("get", "delete"):
        response = api_call(alpha_api, method, f"/workspaces/{workspace.pk}/files?path={path}")
        assert response.status_code == 400, (method, response.content)
        assert says in error_of(response)["fields"]["path"][0]
    write = api_call(alpha_api, "put", f"/workspaces/{workspace.pk}/files?path={path}", {"content": "x"})
    assert write.status_code == 400
    exec_cwd = api_call(
        alpha_api, "post", f"/workspaces/{workspace.pk}/exec", {"command": "true", "cwd": path}
    )
    # A stopped workspace runs nothing: the state is the first thing wrong.
    assert exec_cwd.status_code == 409
