"""/api/v1/agents over HTTP: profiles (CRUD), runs (create, list with filters, read with the
queue position), a run's events by cursor, and the controls (cancel, pause, resume,
approve, deny, commit) with a 409 that says why when the run's state does not allow them;
roles and key scopes; bad input as 400 with nothing written."""

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.test import Client, override_settings
from django_tenants.utils import schema_context

from apps.agents.events import event_append
from apps.agents.models import AgentProfile, AgentRun, Event
from apps.workspaces.models import Workspace
from tests.api.conftest import error_of, key_client, new_key, send_json, throttle_reset
from tests.conftest import World, client_for

pytestmark = pytest.mark.django_db

API = "/api/v1"


@pytest.fixture(autouse=True)
def _fresh_throttle() -> Iterator[None]:
    throttle_reset()
    yield
    throttle_reset()


@pytest.fixture
def alpha(world: World) -> Iterator[World]:
    """The test starts in Alpha's schema; a request through the test client leaves the
    connection in public, so reads after one go through in_alpha."""
    with schema_context(world.alpha.schema_name):
        yield world


def in_alpha(world: World) -> Any:
    return schema_context(world.alpha.schema_name)


@pytest.fixture
def workspace(alpha: World) -> Workspace:
    """A workspace recorded as running: runs are created against it; no worker takes them
    up here (nothing is committed), so no sandbox is needed."""
    return Workspace.objects.create(name="agents-api", state=Workspace.State.RUNNING)


def _runs(client: Client, **params: Any) -> list[dict[str, Any]]:
    response = client.get(f"{API}/agents/runs", params)
    assert response.status_code == 200, response.content
    return list(response.json()["results"])


def _create(client: Client, body: dict[str, Any]) -> Any:
    return send_json(client, "post", "/agents/runs", body)


def _events(client: Client, run_id: object, **params: Any) -> dict[str, Any]:
    response = client.get(f"{API}/agents/runs/{run_id}/events", params)
    assert response.status_code == 200, response.content
    body: dict[str, Any] = response.json()
    return body


# Runs ---------------------------------------------------------------------------------------------


def test_a_member_starts_a_run_and_finds_it_with_its_first_events(alpha: World, workspace: Workspace) -> None:
    amy = client_for(alpha.amy, alpha.alpha)
    response = _create(amy, {"workspace": workspace.pk, "task": "  Make the failing test pass.  "})
    assert response.status_code == 201, response.content
    run = response.json()
    assert run["state"] == "queued"
    assert run["task"] == "Make the failing test pass."
    assert run["workspace"] == workspace.pk
    assert run["priority"] == "interactive"
    assert run["created_by"] == alpha.amy.pk
    assert run["cost"] == "0E-8" or float(run["cost"]) == 0

    read = amy.get(f"{API}/agents/runs/{run['id']}")
    assert read.status_code == 200
    assert read.json()["id"] == run["id"]
    assert [listed["id"] for listed in _runs(amy)] == [run["id"]]
    events = _events(amy, run["id"])["events"]
    assert [(event["seq"], event["kind"]) for event in events] == [(1, "state"), (2, "message")]
    assert events[1]["payload"] == {"role": "user", "text": "Make the failing test pass."}


def test_runs_are_filtered_by_state_workspace_and_profile(alpha: World, workspace: Workspace) -> None:
    alice = client_for(alpha.alice, alpha.alpha)
    other = Workspace.objects.create(name="agents-api-other", state=Workspace.State.RUNNING)
    profile = AgentProfile.objects.create(name="reviewer")
    first = _create(alice, {"workspace": workspace.pk, "task": "one"}).json()
    second = _create(alice, {"workspace": other.pk, "task": "two", "profile": profile.pk}).json()
    send_json(alice, "post", f"/agents/runs/{first['id']}/cancel", {})

    assert {run["id"] for run in _runs(alice, state="cancelled")} == {first["id"]}
    assert {run["id"] for run in _runs(alice, state="queued")} == {second["id"]}
    assert {run["id"] for run in _runs(alice, workspace=other.pk)} == {second["id"]}
    assert {run["id"] for run in _runs(alice, profile=profile.pk)} == {second["id"]}
    bad = alice.get(f"{API}/agents/runs", {"state": "sleeping"})
    assert bad.status_code == 400
    assert "state" in error_of(bad)["fields"]


@override_settings(AGENTS_ORG_CONCURRENCY=0)
def test_a_run_waiting_for_a_slot_shows_its_place_in_the_queue(
    alpha: World, workspace: Workspace, django_capture_on_commit_callbacks: Any
) -> None:
    alice = client_for(alpha.alice, alpha.alpha)
    with django_capture_on_commit_callbacks(execute=True):
        first = _create(alice, {"workspace": workspace.pk, "task": "first"}).json()
    with django_capture_on_commit_callbacks(execute=True):
        second = _create(alice, {"workspace": workspace.pk, "task": "second"}).json()
    assert alice.get(f"{API}/agents/runs/{first['id']}").json()["queue_position"] == 1
    assert alice.get(f"{API}/agents/runs/{second['id']}").json()["queue_position"] == 2
    positions = {run["id"]: run["queue_position"] for run in _runs(alice)}
    assert positions == {first["id"]: 1, second["id"]: 2}
    with django_capture_on_commit_callbacks(execute=True):
        send_json(alice, "post", f"/agents/runs/{first['id']}/cancel", {})
    assert alice.get(f"{API}/agents/runs/{first['id']}").json()["queue_position"] is None
    assert alice.get(f"{API}/agents/runs/{second['id']}").json()["queue_position"] == 1


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({"task": "x"}, "workspace", "invalid"),
        ({"workspace": 999_999, "task": "x"}, "workspace", "workspace_not_found"),
        ({"task": ""}, "task", "invalid"),
        ({"task": "   "}, "task", "invalid"),
        ({"task": "x", "profile": 999_999}, "profile", "profile_not_found"),
        ({"task": "x", "priority": "urgent"}, "priority", "invalid"),
        ({"task": "x", "colour": "blue"}, "colour", "invalid"),
        ({"task": "x", "workspace": "first"}, "workspace", "invalid"),
    ],
)
def test_bad_run_input_is_a_400_on_its_field_and_writes_nothing(
    alpha: World, workspace: Workspace, body: dict[str, Any], field: str, code: str
) -> None:
    if "workspace" not in body and field != "workspace":
        body = {"workspace": workspace.pk, **body}
    response = _create(client_for(alpha.amy, alpha.alpha), body)
    assert response.status_code == 400, response.content
    error = error_of(response)
    assert field in error["fields"]
    assert error["code"] == code
    with in_alpha(alpha):
        assert not AgentRun.objects.exists()


def test_a_task_over_the_size_limit_or_a_stopped_workspace_is_refused(
    alpha: World, workspace: Workspace
) -> None:
    amy = client_for(alpha.amy, alpha.alpha)
    too_long = _create(amy, {"workspace": workspace.pk, "task": "x" * (settings.AGENTS_MAX_TASK_CHARS + 1)})
    assert too_long.status_code == 400
    assert error_of(too_long)["code"] == "task_too_long"
    with in_alpha(alpha):
        stopped = Workspace.objects.create(name="agents-api-stopped", state=Workspace.State.STOPPED)
    response = _create(amy, {"workspace": stopped.pk, "task": "fix it"})
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "workspace_not_running"
    assert "start it" in error["message"]
    with in_alpha(alpha):
        assert not AgentRun.objects.exists()


def test_who_may_start_runs_and_who_may_only_watch(alpha: World, workspace: Workspace) -> None:
    _, reader = new_key(alpha, ["agents:read"], name="reader")
    _, writer = new_key(alpha, ["agents:write"], name="writer")
    refused = _create(key_client(reader), {"workspace": workspace.pk, "task": "x"})
    assert refused.status_code == 403
    assert error_of(refused)["code"] == "missing_scope"
    created = _create(key_client(writer), {"workspace": workspace.pk, "task": "x"})
    assert created.status_code == 201
    assert [run["id"] for run in _runs(key_client(reader))] == [created.json()["id"]]


def test_an_unknown_run_is_a_404(alpha: World) -> None:
    alice = client_for(alpha.alice, alpha.alpha)
    response = alice.get(f"{API}/agents/runs/{uuid.uuid4()}")
    assert response.status_code == 404
    assert error_of(response)["code"] == "run_not_found"
    assert send_json(alice, "post", f"/agents/runs/{uuid.uuid4()}/cancel", {}).status_code == 404


def test_another_organizations_key_cannot_read_a_run(alpha: World, workspace: Workspace) -> None:
    run = AgentRun.objects.create(task="alpha secret", workspace=workspace)
    _, beta_admin = new_key(alpha, ["admin"], organization=alpha.beta, name="beta admin")
    assert key_client(beta_admin).get(f"{API}/agents/runs/{run.pk}").status_code == 404
    assert key_client(beta_admin, alpha.alpha).get(f"{API}/agents/runs/{run.pk}").status_code == 403


# Events -------------------------------------------------------------------------------------------


def test_events_are_read_page_by_page_with_a_cursor(alpha: World, workspace: Workspace) -> None:
    run = AgentRun.objects.create(task="count", workspace=workspace, state=AgentRun.State.RUNNING)
    for number in range(5):
        event_append(run=run, kind="message", payload={"role": "assistant", "text": str(number)})
    amy = client_for(alpha.amy, alpha.alpha)

    first = _events(amy, run.pk, limit=2)
    assert [event["seq"] for event in first["events"]] == [1, 2]
    assert first["has_more"] is True
    assert first["next_after"] == 2
    assert first["run_state"] == "running"
    rest = _events(amy, run.pk, after=first["next_after"], limit=10)
    assert [event["payload"]["text"] for event in rest["events"]] == ["2", "3", "4"]
    assert rest["has_more"] is False
    empty = _events(amy, run.pk, after=5)
    assert empty == {"events": [], "next_after": 5, "has_more": False, "run_state": "running"}

    for params in ({"after": "-1"}, {"limit": "0"}, {"limit": "1001"}, {"after": "first"}):
        response = amy.get(f"{API}/agents/runs/{run.pk}/events", params)
        assert response.status_code == 400, params
        assert set(error_of(response)["fields"]) & {"after", "limit"}


# Controls -----------------------------------------------------------------------------------------


def test_cancel_pause_and_resume_follow_the_runs_state(alpha: World, workspace: Workspace) -> None:
    amy = client_for(alpha.amy, alpha.alpha)
    run = _create(amy, {"workspace": workspace.pk, "task": "wait"}).json()
    path = f"/agents/runs/{run['id']}"

    paused = send_json(amy, "post", f"{path}/pause", {})
    assert paused.status_code == 200
    assert paused.json()["state"] == "paused"
    again = send_json(amy, "post", f"{path}/pause", {})
    assert again.status_code == 409
    assert "paused" in error_of(again)["message"]
    resumed = send_json(amy, "post", f"{path}/resume", {})
    assert resumed.json()["state"] == "queued"
    not_paused = send_json(amy, "post", f"{path}/resume", {})
    assert not_paused.status_code == 409
    assert error_of(not_paused)["code"] == "run_not_paused"

    cancelled = send_json(amy, "post", f"{path}/cancel", {})
    assert cancelled.json()["state"] == "cancelled"
    twice = send_json(amy, "post", f"{path}/cancel", {})
    assert twice.status_code == 409
    error = error_of(twice)
    assert error["code"] == "run_finished"
    assert "already cancelled" in error["message"]
    states = [
        event["payload"]["state"] for event in _events(amy, run["id"])["events"] if event["kind"] == "state"
    ]
    assert states == ["queued", "paused", "queued", "cancelled"]


def _waiting_run(workspace: Workspace) -> AgentRun:
    """A run stopped before a risky action, as the loop leaves it in confirmation mode."""
    run = AgentRun.objects.create(task="clean up", workspace=workspace, state=AgentRun.State.WAITING)
    event_append(
        run=run,
        kind="action",
        step=1,
        step_key="step:1:action",
        payload={"tool": "bash", "arguments": {"command": "rm -rf build"}, "call_id": "c1", "thought": ""},
    )
    return run


def test_approving_a_waiting_action_puts_the_run_back_in_line(alpha: World, workspace: Workspace) -> None:
    run = _waiting_run(workspace)
    amy = client_for(alpha.amy, alpha.alpha)
    response = send_json(amy, "post", f"/agents/runs/{run.pk}/approve", {"note": "build is generated"})
    assert response.status_code == 200, response.content
    assert response.json()["state"] == "queued"
    with in_alpha(alpha):
        last = Event.objects.filter(run=run).order_by("-seq").first()
    assert last is not None
    assert last.payload["decision"] == "approve"
    assert "build is generated" in last.payload["reason"]
    late = send_json(amy, "post", f"/agents/runs/{run.pk}/deny", {})
    assert late.status_code == 409
    assert error_of(late)["code"] == "run_not_waiting"


def test_denying_a_waiting_action_tells_the_agent(alpha: World, workspace: Workspace) -> None:
    run = _waiting_run(workspace)
    amy = client_for(alpha.amy, alpha.alpha)
    response = send_json(amy, "post", f"/agents/runs/{run.pk}/deny", {"note": "keep the build"})
    assert response.status_code == 200
    with in_alpha(alpha):
        observation = Event.objects.get(run=run, kind="observation")
        another = _waiting_run(workspace)
    assert observation.payload["error"] is True
    assert "keep the build" in observation.payload["output"]
    bad_note = send_json(amy, "post", f"/agents/runs/{another.pk}/deny", {"note": "n" * 2001})
    assert bad_note.status_code == 400


def test_committing_needs_a_finished_run_and_a_message(alpha: World, workspace: Workspace) -> None:
    amy = client_for(alpha.amy, alpha.alpha)
    running = AgentRun.objects.create(task="edit", workspace=workspace, state=AgentRun.State.RUNNING)
    early = send_json(amy, "post", f"/agents/runs/{running.pk}/commit", {"message": "Fix"})
    assert early.status_code == 409
    assert error_of(early)["code"] == "run_not_finished"
    with in_alpha(alpha):
        finished = AgentRun.objects.create(task="edit", workspace=workspace, state=AgentRun.State.SUCCEEDED)
    no_message = send_json(amy, "post", f"/agents/runs/{finished.pk}/commit", {})
    assert no_message.status_code == 400
    assert "message" in error_of(no_message)["fields"]


def test_a_viewer_watches_but_cannot_control_a_run(alpha: World, workspace: Workspace) -> None:
    from apps.tenancy.models import Membership
    from tests.factories import make_user

    viewer = make_user("agents-viewer@alpha.test", "Vi")
    Membership.objects.create(user=viewer, organization=alpha.alpha, role=Membership.Role.VIEWER)
    run = AgentRun.objects.create(task="watch me", workspace=workspace)
    client = client_for(viewer, alpha.alpha)
    assert client.get(f"{API}/agents/runs/{run.pk}").status_code == 200
    for control in ("cancel", "pause", "resume", "approve", "deny", "commit"):
        response = send_json(client, "post", f"/agents/runs/{run.pk}/{control}", {})
        assert response.status_code == 403, control
        assert error_of(response)["code"] == "role_forbidden"
    with in_alpha(alpha):
        run.refresh_from_db()
    assert run.state == "queued"


# Profiles -----------------------------------------------------------------------------------------


def test_a_manager_creates_edits_and_deletes_a_profile(alpha: World, workspace: Workspace) -> None:
    alice = client_for(alpha.alice, alpha.alpha)
    created = send_json(
        alice,
        "post",
        "/agents/profiles",
        {"name": "careful", "max_steps": 20, "max_cost": "0.5", "confirmation": True, "tools": ["bash"]},
    )
    assert created.status_code == 201, created.content
    profile = created.json()
    assert profile["max_steps"] == 20
    assert profile["max_cost"] == "0.500000"
    assert profile["confirmation"] is True
    path = f"/agents/profiles/{profile['id']}"

    edited = send_json(alice, "patch", path, {"max_steps": 30})
    assert edited.status_code == 200
    assert edited.json()["max_steps"] == 30
    assert edited.json()["confirmation"] is True
    run = _create(alice, {"workspace": workspace.pk, "task": "x", "profile": profile["id"]}).json()
    assert run["profile"] == profile["id"]
    assert run["settings"]["max_steps"] == 30

    listed = client_for(alpha.amy, alpha.alpha).get(f"{API}/agents/profiles")
    assert [item["name"] for item in listed.json()] == ["careful"]
    assert alice.delete(f"{API}{path}").status_code == 204
    assert alice.get(f"{API}{path}").status_code == 404
    kept = alice.get(f"{API}/agents/runs/{run['id']}").json()
    assert kept["profile"] is None
    assert kept["settings"]["max_steps"] == 30


def test_profile_mistakes_are_refused_with_a_reason(alpha: World) -> None:
    alice = client_for(alpha.alice, alpha.alpha)
    assert send_json(alice, "post", "/agents/profiles", {"name": "dup"}).status_code == 201
    taken = send_json(alice, "post", "/agents/profiles", {"name": "dup"})
    assert taken.status_code == 409
    assert error_of(taken)["code"] == "name_taken"
    for body, field in [
        ({"name": "m", "model": "no-such-model"}, "model"),
        ({"name": "s", "max_steps": 0}, "max_steps"),
        ({"name": "r", "risk_patterns": ["(unclosed"]}, "risk_patterns"),
        ({"name": "c", "max_cost": "-1"}, "max_cost"),
        ({"role": "no name"}, "name"),
    ]:
        response = send_json(alice, "post", "/agents/profiles", body)
        assert response.status_code == 400, body
        assert field in error_of(response)["fields"], body
    with in_alpha(alpha):
        assert list(AgentProfile.objects.values_list("name", flat=True)) == ["dup"]


def test_members_may_not_change_profiles(alpha: World) -> None:
    amy = client_for(alpha.amy, alpha.alpha)
    response = send_json(amy, "post", "/agents/profiles", {"name": "mine"})
    assert response.status_code == 403
    assert error_of(response)["code"] == "role_forbidden"
    with in_alpha(alpha):
        profile = AgentProfile.objects.create(name="theirs")
    assert send_json(amy, "patch", f"/agents/profiles/{profile.pk}", {"max_steps": 3}).status_code == 403
    assert amy.delete(f"{API}/agents/profiles/{profile.pk}").status_code == 403
    assert amy.get(f"{API}/agents/profiles/{profile.pk}").status_code == 200
