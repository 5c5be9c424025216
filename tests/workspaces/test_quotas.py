"""Per-organization quotas: at most WORKSPACES_MAX_PER_ORGANIZATION workspaces and
WORKSPACES_MAX_RUNNING_PER_ORGANIZATION running, enforced atomically: two starts
racing for the last slot on two database connections cannot both win."""

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection, connections
from django.test import Client, override_settings

from apps.core.errors import Conflict
from apps.tenancy.audit import Actor
from apps.tenancy.models import AuditEvent
from apps.workspaces import services
from apps.workspaces.models import Workspace
from apps.workspaces.runtime import runtime_client
from tests.api.conftest import error_of
from tests.conftest import World
from tests.runtime_server import RuntimeServer
from tests.workspaces.conftest import api_call, in_schema


@pytest.mark.django_db
def test_the_organization_cannot_have_more_workspaces_than_its_limit(world: World, alpha_api: Client) -> None:
    with in_schema(world.alpha):
        existing = Workspace.objects.exclude(state=Workspace.State.DELETED).count()
    with override_settings(WORKSPACES_MAX_PER_ORGANIZATION=existing + 1):
        with in_schema(world.alpha):
            services.workspace_create(
                actor=Actor(user=world.alice), organization=world.alpha, name="last-slot", provision=False
            )
        response = api_call(alpha_api, "post", "/workspaces", {"name": "one-too-many"})
    assert response.status_code == 409
    error = error_of(response)
    assert error["code"] == "workspace_quota_exceeded"
    assert "limit" in error["message"]
    # Beta's own quota is its own: Alpha's count does not touch it.
    with in_schema(world.beta):
        assert not Workspace.objects.filter(name="one-too-many").exists()


@pytest.mark.django_db
def test_starting_beyond_the_running_limit_is_refused(
    world: World, alpha_api: Client, runtime_server: RuntimeServer, workspaces_cleanup: list[Any]
) -> None:
    with in_schema(world.alpha):
        running = Workspace.objects.filter(state=Workspace.State.RUNNING).count()
    with override_settings(WORKSPACES_MAX_RUNNING_PER_ORGANIZATION=running + 1):
        first = api_call(alpha_api, "post", "/workspaces", {"name": "runs", "memory_mb": 256, "disk_mb": 128})
        assert first.status_code == 201, first.content
        second = api_call(alpha_api, "post", "/workspaces", {"name": "waits", "start": False})
        assert second.status_code == 201
        with in_schema(world.alpha):
            for workspace_id in (first.json()["id"], second.json()["id"]):
                workspaces_cleanup.append((world.alpha, Workspace.objects.get(pk=workspace_id)))
        refused = api_call(alpha_api, "post", f"/workspaces/{second.json()['id']}/start")
        assert refused.status_code == 409
        assert error_of(refused)["code"] == "running_quota_exceeded"
        also_refused = api_call(alpha_api, "post", "/workspaces", {"name": "third"})
        assert also_refused.status_code == 409
        # Stopping one frees its slot.
        api_call(alpha_api, "post", f"/workspaces/{first.json()['id']}/stop")
        started = api_call(alpha_api, "post", f"/workspaces/{second.json()['id']}/start")
        assert started.status_code == 200
        assert started.json()["state"] == "running"


@pytest.fixture
def two_stopped(live_db: World, runtime_server: RuntimeServer) -> Iterator[list[Workspace]]:
    """Two committed, stopped workspaces of Alpha (the threads see only committed rows)."""
    with in_schema(live_db.alpha):
        made = [
            services.workspace_create(
                actor=Actor(user=live_db.alice),
                organization=live_db.alpha,
                name=f"race-{index}",
                memory_mb=256,
                disk_mb=128,
                start=False,
            )
            for index in range(2)
        ]
    yield made
    with in_schema(live_db.alpha):
        for workspace in made:
            runtime_client().destroy_sandbox(live_db.alpha.schema_name, workspace.sandbox_id)
        Workspace.objects.filter(pk__in=[workspace.pk for workspace in made]).delete()
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {AuditEvent._meta.db_table} WHERE organization_id = %s"  # noqa: S608 (a model's table)
            " AND target_type = 'workspaces.Workspace' AND target_id = ANY(%s)",
            [live_db.alpha.pk, [str(workspace.pk) for workspace in made]],
        )


def test_two_concurrent_starts_cannot_both_take_the_last_running_slot(
    live_db: World, two_stopped: list[Workspace]
) -> None:
    with in_schema(live_db.alpha):
        running = Workspace.objects.filter(state=Workspace.State.RUNNING).count()
    barrier = threading.Barrier(2)
    outcomes: dict[int, str] = {}

    def start(workspace: Workspace) -> None:
        try:
            with in_schema(live_db.alpha):
                barrier.wait(timeout=10)
                services.workspace_start(
                    actor=Actor(user=live_db.alice), organization=live_db.alpha, workspace=workspace
                )
            outcomes[workspace.pk] = "started"
        except Conflict as exc:
            outcomes[workspace.pk] = exc.code
        finally:
            connections.close_all()  # this thread's own connection

    with override_settings(WORKSPACES_MAX_RUNNING_PER_ORGANIZATION=running + 1):
        threads = [threading.Thread(target=start, args=(workspace,)) for workspace in two_stopped]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert sorted(outcomes.values()) == ["running_quota_exceeded", "started"], outcomes
    with in_schema(live_db.alpha):
        states = sorted(Workspace.objects.filter(pk__in=outcomes).values_list("state", flat=True))
    assert states == ["running", "stopped"]
    # And the runtime agrees: exactly one of the two sandboxes runs.
    infos = [runtime_client().get_sandbox(live_db.alpha.schema_name, w.sandbox_id) for w in two_stopped]
    assert sorted(info.state for info in infos) == ["running", "stopped"]
