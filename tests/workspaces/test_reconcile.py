"""Our records follow the runtime: when it restarts (every sandbox stopped) or loses a
sandbox, the next call on the workspace answers 409 saying its sandbox stopped, and the
workspace shows stopped; the beat task finds the same without anyone calling. A start
afterwards works, and the files are still there."""

import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.test import Client, override_settings

from apps.tenancy.models import AuditEvent
from apps.workspaces.models import Workspace
from apps.workspaces.tasks import stop_idle_workspaces_task
from tests.api.conftest import error_of
from tests.conftest import World, client_for
from tests.runtime_server import RuntimeServer, start_runtime, stop_runtime
from tests.workspaces.conftest import api_call, in_schema, make_workspace

pytestmark = pytest.mark.django_db


@dataclass
class OwnRuntime:
    """A runtime of this module's own, which a test may restart (same root, address, secret)."""

    server: RuntimeServer

    def restart(self) -> None:
        stop_runtime(self.server)
        self.server = start_runtime(
            self.server.root,
            address=self.server.address,
            secret=self.server.secret,
            log_name="runtime-reconcile.log",
        )


@pytest.fixture
def own_runtime() -> Iterator[OwnRuntime]:
    root = Path(tempfile.mkdtemp(prefix="agentyard-reconcile-"))
    own = OwnRuntime(start_runtime(root, log_name="runtime-reconcile.log"))
    try:
        with override_settings(RUNTIME_ADDRESS=own.server.address, RUNTIME_SECRET=own.server.secret):
            yield own
    finally:
        stop_runtime(own.server)
        shutil.rmtree(root, ignore_errors=True)


def _state(world: World, workspace: Workspace) -> str:
    with in_schema(world.alpha):
        workspace.refresh_from_db()
    return workspace.state


def _system_stops(workspace: Workspace) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action="workspace.stopped", target_id=str(workspace.pk)))


def test_after_a_runtime_restart_exec_says_the_workspace_stopped_and_a_start_brings_it_back(
    world: World, alpha_api: Client, own_runtime: OwnRuntime
) -> None:
    workspace = make_workspace(world, name="survivor")
    wrote = api_call(
        alpha_api, "post", f"/workspaces/{workspace.pk}/exec", {"command": "echo kept > notes.txt"}
    )
    assert wrote.status_code == 200, wrote.content

    own_runtime.restart()

    refused = api_call(alpha_api, "post", f"/workspaces/{workspace.pk}/exec", {"command": "true"})
    assert refused.status_code == 409, refused.content
    error = error_of(refused)
    assert error["code"] == "workspace_not_running"
    assert "sandbox stopped" in error["message"]
    assert "start it again" in error["message"]

    # The truth is recorded: the API and the page say stopped, and the audit log says why.
    assert api_call(alpha_api, "get", f"/workspaces/{workspace.pk}").json()["state"] == "stopped"
    assert _state(world, workspace) == "stopped"
    assert workspace.stopped_at is not None
    page = client_for(world.alice, world.alpha).get(f"/workspaces/{workspace.pk}/").content.decode()
    assert 'data-testid="workspace-state">Stopped' in page
    [event] = _system_stops(workspace)
    assert event.actor is None
    assert event.changes["after"] == {"state": "stopped", "reason": "sandbox stopped on the runtime"}

    # Asking again: the same 409 (now from our own record), nothing more recorded.
    again = api_call(alpha_api, "post", f"/workspaces/{workspace.pk}/exec", {"command": "true"})
    assert again.status_code == 409
    assert len(_system_stops(workspace)) == 1

    started = api_call(alpha_api, "post", f"/workspaces/{workspace.pk}/start")
    assert started.status_code == 200, started.content
    assert started.json()["state"] == "running"
    read = api_call(alpha_api, "post", f"/workspaces/{workspace.pk}/exec", {"command": "cat notes.txt"})
    assert read.status_code == 200, read.content
    assert read.json()["stdout"] == "kept\n"


def test_a_lost_sandbox_is_a_409_not_a_404_about_a_path_and_the_next_start_makes_it_again(
    world: World, alpha_api: Client, own_runtime: OwnRuntime
) -> None:
    workspace = make_workspace(world, name="lost-one")
    # A missing directory of a sandbox that exists is still the 404 it was, and changes nothing.
    no_dir = api_call(
        alpha_api, "post", f"/workspaces/{workspace.pk}/exec", {"command": "true", "cwd": "nowhere"}
    )
    assert no_dir.status_code == 404, no_dir.content
    assert "No such directory" in error_of(no_dir)["message"]
    assert _state(world, workspace) == "running"

    assert own_runtime.server.client().destroy_sandbox(world.alpha.schema_name, workspace.sandbox_id)

    listed = api_call(alpha_api, "get", f"/workspaces/{workspace.pk}/files?path=")
    assert listed.status_code == 409, listed.content
    error = error_of(listed)
    assert error["code"] == "sandbox_missing"
    assert "missing on the runtime" in error["message"]
    assert _state(world, workspace) == "stopped"
    [event] = _system_stops(workspace)
    assert event.changes["after"]["reason"] == "sandbox missing on the runtime"

    started = api_call(alpha_api, "post", f"/workspaces/{workspace.pk}/start")
    assert started.status_code == 200, started.content
    ran = api_call(alpha_api, "post", f"/workspaces/{workspace.pk}/exec", {"command": "echo back"})
    assert ran.status_code == 200, ran.content
    assert ran.json()["stdout"] == "back\n"


def test_the_beat_task_records_stopped_and_missing_sandboxes_once(
    world: World, own_runtime: OwnRuntime
) -> None:
    restarted = make_workspace(world, name="restarted-one")
    lost = make_workspace(world, name="lost-two")
    stopped_by_us = make_workspace(world, name="already-stopped", start=False)
    own_runtime.restart()
    # After the restart: one sandbox the runtime lost, one started again by someone.
    own_runtime.server.client().destroy_sandbox(world.alpha.schema_name, lost.sandbox_id)
    fresh = make_workspace(world, name="started-after")

    result = stop_idle_workspaces_task()
    assert sorted(result["reconciled"]["alpha"]) == sorted([restarted.pk, lost.pk])
    assert [_state(world, ws) for ws in (restarted, lost, stopped_by_us, fresh)] == [
        "stopped",
        "stopped",
        "stopped",
        "running",
    ]
    reasons = {event.target_id: event.changes["after"]["reason"] for event in _system_stops(restarted)}
    reasons |= {event.target_id: event.changes["after"]["reason"] for event in _system_stops(lost)}
    assert reasons == {
        str(restarted.pk): "sandbox stopped on the runtime",
        str(lost.pk): "sandbox missing on the runtime",
    }

    # Twice: nothing more to do, nothing recorded twice.
    assert stop_idle_workspaces_task()["reconciled"] == {}
    assert len(_system_stops(restarted)) == len(_system_stops(lost)) == 1

    # The page lists them as they are.
    listing = client_for(world.alice, world.alpha).get("/workspaces/").content.decode()
    assert listing.count("state-stopped") == 3
    assert listing.count("state-running") == 1


def test_with_the_runtime_down_the_task_changes_nothing_and_logs_once(
    world: World, runtime_down: str, caplog: pytest.LogCaptureFixture
) -> None:
    with in_schema(world.alpha):
        one = Workspace.objects.create(name="down-one", state=Workspace.State.RUNNING)
        two = Workspace.objects.create(name="down-two", state=Workspace.State.RUNNING)
    with caplog.at_level(logging.WARNING, logger="apps.workspaces"):
        result = stop_idle_workspaces_task()
    assert result == {"reconciled": {}, "stopped": {}}
    assert (_state(world, one), _state(world, two)) == ("running", "running")
    warnings = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "not reachable" in warnings[0].getMessage()
    assert not AuditEvent.objects.filter(action="workspace.stopped").exists()
