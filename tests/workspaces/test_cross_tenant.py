"""Alpha's workspaces are unreachable from Beta: ids, files and exec over REST
(Beta's key and Beta's people get 404 or 403), and over gRPC a call naming Beta's
tenant for Alpha's sandbox finds nothing."""

import pytest
from django.test import Client

from apps.workspaces.models import Workspace
from runtime.client import SandboxNotFound
from tests.conftest import World, client_for
from tests.runtime_server import RuntimeServer
from tests.workspaces.conftest import api_call

pytestmark = pytest.mark.django_db


def test_betas_key_cannot_reach_alphas_workspace(world: World, beta_api: Client, running: Workspace) -> None:
    base = f"/workspaces/{running.pk}"
    assert api_call(beta_api, "get", base).status_code == 404
    assert api_call(beta_api, "get", f"{base}/files?path=").status_code == 404
    assert api_call(beta_api, "put", f"{base}/files?path=x", {"content": "x"}).status_code == 404
    assert api_call(beta_api, "post", f"{base}/exec", {"command": "id"}).status_code == 404
    assert api_call(beta_api, "post", f"{base}/stop").status_code == 404
    assert api_call(beta_api, "delete", base).status_code == 404
    assert api_call(beta_api, "post", f"{base}/git/clone", {"url": "x", "path": "y"}).status_code == 404
    listed = api_call(beta_api, "get", "/workspaces").json()["results"]
    assert running.name not in {item["name"] for item in listed}


def test_betas_owner_is_refused_on_alphas_host(world: World, running: Workspace) -> None:
    bob = client_for(world.bob, world.alpha)
    for path in (f"/workspaces/{running.pk}/", f"/workspaces/{running.pk}/tree/?path=", "/workspaces/"):
        response = bob.get(path)
        assert response.status_code in {302, 403, 404}, (path, response.status_code)
        assert running.name not in response.content.decode()
    assert api_call(bob, "post", f"/workspaces/{running.pk}/exec", {"command": "id"}).status_code in {
        403,
        404,
    }


def test_a_forged_tenant_over_grpc_finds_nothing(
    world: World, runtime_server: RuntimeServer, running: Workspace
) -> None:
    client = runtime_server.client()
    assert client.get_sandbox(world.alpha.schema_name, running.sandbox_id).running
    forged = world.beta.schema_name
    for call in (
        lambda: client.get_sandbox(forged, running.sandbox_id),
        lambda: client.exec(forged, running.sandbox_id, command="id"),
        lambda: client.list_dir(forged, running.sandbox_id, ""),
        lambda: client.read_file(forged, running.sandbox_id, "x"),
        lambda: client.write_file(forged, running.sandbox_id, "x", b"y"),
        lambda: client.stop_sandbox(forged, running.sandbox_id),
    ):
        with pytest.raises(SandboxNotFound):
            call()
    assert running.sandbox_id not in {info.sandbox_id for info in client.list_sandboxes(forged)}
    # Destroying under the forged tenant removes nothing of Alpha's.
    assert client.destroy_sandbox(forged, running.sandbox_id) is False
    assert client.get_sandbox(world.alpha.schema_name, running.sandbox_id).running
