"""Auto-stop: the beat task stops running workspaces idle past their timeout (by our
last activity and the runtime's, terminal keystrokes included), leaves busy ones
running, and is safe to run twice."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from apps.tenancy.models import AuditEvent
from apps.workspaces.models import Workspace
from apps.workspaces.tasks import stop_idle_workspaces, stop_idle_workspaces_task
from tests.conftest import World
from tests.runtime_server import RuntimeServer
from tests.workspaces.conftest import Cleanup, in_schema, make_workspace

pytestmark = pytest.mark.django_db


def test_idle_workspaces_stop_and_busy_ones_keep_running(
    world: World, runtime_server: RuntimeServer, workspaces_cleanup: Cleanup
) -> None:
    idle = make_workspace(world, name="idle-one", idle_timeout_seconds=600)
    busy = make_workspace(world, name="busy-one", idle_timeout_seconds=3600)
    workspaces_cleanup += [(world.alpha, idle), (world.alpha, busy)]

    # Twenty minutes from now: past the idle one's 10 minutes, within the busy one's hour.
    later = timezone.now() + timedelta(minutes=20)
    stopped = stop_idle_workspaces(now=later)
    assert idle.pk in stopped["alpha"]
    assert busy.pk not in stopped.get("alpha", [])
    with in_schema(world.alpha):
        idle.refresh_from_db()
        busy.refresh_from_db()
    assert (idle.state, busy.state) == ("stopped", "running")
    assert not runtime_server.client().get_sandbox(world.alpha.schema_name, idle.sandbox_id).running
    event = AuditEvent.objects.get(
        organization=world.alpha, action="workspace.stopped", target_id=str(idle.pk)
    )
    assert event.changes["after"]["reason"] == "idle"
    assert event.actor is None

    # Again: nothing more to do, nothing fails.
    again = stop_idle_workspaces(now=later)
    assert idle.pk not in again.get("alpha", [])
    assert AuditEvent.objects.filter(action="workspace.stopped", target_id=str(idle.pk)).count() == 1


def test_activity_seen_only_by_the_runtime_keeps_a_workspace_running(
    world: World, runtime_server: RuntimeServer, workspaces_cleanup: Cleanup
) -> None:
    workspace = make_workspace(world, name="terminal-only", idle_timeout_seconds=600)
    workspaces_cleanup.append((world.alpha, workspace))
    with in_schema(world.alpha):
        # Our own record says an hour ago; the runtime saw a command just now.
        Workspace.objects.filter(pk=workspace.pk).update(last_activity_at=timezone.now() - timedelta(hours=1))
    runtime_server.client().exec(world.alpha.schema_name, workspace.sandbox_id, command="true")
    assert workspace.pk not in stop_idle_workspaces().get("alpha", [])
    with in_schema(world.alpha):
        workspace.refresh_from_db()
    assert workspace.state == "running"


def test_the_task_is_on_celery_beats_schedule() -> None:
    entry = settings.CELERY_BEAT_SCHEDULE["workspaces-stop-idle"]
    assert entry["task"] == stop_idle_workspaces_task.name == "workspaces.stop_idle"
    assert entry["schedule"] == float(settings.WORKSPACES_IDLE_CHECK_SECONDS)
