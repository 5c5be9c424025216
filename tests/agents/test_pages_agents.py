"""The agent pages over HTTP (the live parts are in tests/browser/test_agents_browser.py):
the runs list, the new-run form and its refusals, a run's page with its controls and
result, and who sees which button."""

from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client, override_settings
from django_tenants.utils import schema_context

from apps.agents.events import event_append
from apps.agents.models import AgentProfile, AgentRun
from apps.tenancy.models import Membership
from apps.workspaces.models import Workspace
from tests.conftest import World, client_for
from tests.factories import make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def alpha(world: World) -> Iterator[World]:
    with schema_context(world.alpha.schema_name):
        yield world


def in_alpha(world: World) -> Any:
    return schema_context(world.alpha.schema_name)


@pytest.fixture
def workspace(alpha: World) -> Workspace:
    return Workspace.objects.create(name="pages-ws", state=Workspace.State.RUNNING)


@pytest.fixture
def viewer(alpha: World) -> Client:
    user = make_user("agents-pages-viewer@alpha.test", "Vera")
    Membership.objects.create(user=user, organization=alpha.alpha, role=Membership.Role.VIEWER)
    return client_for(user, alpha.alpha)


def test_the_sidebar_leads_to_the_runs_list_with_state_steps_and_cost(
    alpha: World, workspace: Workspace
) -> None:
    AgentRun.objects.create(
        task="Upgrade the parser", workspace=workspace, state=AgentRun.State.SUCCEEDED, steps=7, cost="0.0125"
    )
    AgentRun.objects.create(task="Write the changelog", workspace=workspace)
    amy = client_for(alpha.amy, alpha.alpha)
    dashboard = amy.get("/").content.decode()
    assert '<a href="/agents/"' in dashboard

    page = amy.get("/agents/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "Upgrade the parser" in html
    assert "Succeeded" in html
    assert ">7</td>" in html
    assert "$0.0125" in html
    assert "Write the changelog" in html
    assert 'href="/agents/new/"' in html

    only_done = amy.get("/agents/", {"state": "succeeded"}).content.decode()
    assert "Upgrade the parser" in only_done
    assert "Write the changelog" not in only_done


def test_a_member_starts_a_run_from_the_form_and_lands_on_its_page(
    alpha: World, workspace: Workspace
) -> None:
    profile = AgentProfile.objects.create(name="tester")
    Workspace.objects.create(name="pages-stopped", state=Workspace.State.STOPPED)
    amy = client_for(alpha.amy, alpha.alpha)
    form = amy.get("/agents/new/").content.decode()
    assert "pages-ws" in form
    assert "pages-stopped (stopped)" in form
    assert "tester" in form

    response = amy.post(
        "/agents/new/",
        {
            "workspace": workspace.pk,
            "profile": profile.pk,
            "task": "Add a test for the parser",
            "priority": "batch",
        },
    )
    assert response.status_code == 302
    with in_alpha(alpha):
        run = AgentRun.objects.get()
    assert response["Location"] == f"/agents/runs/{run.pk}/"
    assert (run.task, run.profile_id, run.priority, run.created_by_id) == (
        "Add a test for the parser",
        profile.pk,
        "batch",
        alpha.amy.pk,
    )
    page = amy.get(response["Location"]).content.decode()
    assert "Add a test for the parser" in page
    assert f'data-run-id="{run.pk}"' in page
    assert "js/agent_run.js" in page


def test_the_form_says_why_a_run_cannot_start(alpha: World, workspace: Workspace) -> None:
    stopped = Workspace.objects.create(name="pages-stopped", state=Workspace.State.STOPPED)
    amy = client_for(alpha.amy, alpha.alpha)
    response = amy.post(
        "/agents/new/", {"workspace": stopped.pk, "task": "Fix it", "priority": "interactive"}
    )
    assert response.status_code == 400
    assert "start it before running an agent on it" in response.content.decode()
    empty = amy.post("/agents/new/", {"workspace": workspace.pk, "task": "", "priority": "interactive"})
    assert empty.status_code == 400
    assert "This field is required" in empty.content.decode()
    with in_alpha(alpha):
        assert not AgentRun.objects.exists()


def test_the_run_page_shows_the_result_diff_and_a_commit_form(alpha: World, workspace: Workspace) -> None:
    run = AgentRun.objects.create(
        task="Fix the typo",
        workspace=workspace,
        state=AgentRun.State.SUCCEEDED,
        result={"answer": "Fixed the typo in README.", "diff": "-teh\n+the\n", "commit": None},
    )
    html = client_for(alpha.amy, alpha.alpha).get(f"/agents/runs/{run.pk}/").content.decode()
    assert "Fixed the typo in README." in html
    assert "-teh\n+the\n" in html
    assert f'action="/agents/runs/{run.pk}/commit/"' in html
    # The workspace's terminal sits beside the timeline.
    assert f'data-workspace-id="{workspace.pk}"' in html


def test_controls_act_on_the_run_and_a_wrong_state_is_explained(alpha: World, workspace: Workspace) -> None:
    run = AgentRun.objects.create(task="Wait", workspace=workspace)
    amy = client_for(alpha.amy, alpha.alpha)
    paused = amy.post(f"/agents/runs/{run.pk}/pause/")
    assert paused.status_code == 302
    with in_alpha(alpha):
        run.refresh_from_db()
    assert run.state == "paused"
    assert amy.post(f"/agents/runs/{run.pk}/cancel/").status_code == 302
    again = amy.post(f"/agents/runs/{run.pk}/cancel/")
    assert again.status_code == 409
    assert "already cancelled" in again.content.decode()
    assert amy.post(f"/agents/runs/{run.pk}/approve/").status_code == 409


def test_a_waiting_run_is_approved_from_its_page(alpha: World, workspace: Workspace) -> None:
    run = AgentRun.objects.create(task="Clean", workspace=workspace, state=AgentRun.State.WAITING)
    event_append(
        run=run,
        kind="action",
        step=1,
        step_key="step:1:action",
        payload={"tool": "bash", "arguments": {"command": "rm -rf dist"}, "call_id": "c1", "thought": ""},
    )
    amy = client_for(alpha.amy, alpha.alpha)
    page = amy.get(f"/agents/runs/{run.pk}/").content.decode()
    assert "Waiting for your approval" in page
    assert f'formaction="/agents/runs/{run.pk}/approve/"' in page
    response = amy.post(f"/agents/runs/{run.pk}/approve/", {"note": "dist is generated"})
    assert response.status_code == 302
    with in_alpha(alpha):
        run.refresh_from_db()
    assert run.state == "queued"
    assert "dist is generated" in run.state_reason


def test_a_viewer_watches_runs_but_has_no_buttons(alpha: World, workspace: Workspace, viewer: Client) -> None:
    run = AgentRun.objects.create(task="Watch", workspace=workspace, state=AgentRun.State.WAITING)
    listing = viewer.get("/agents/").content.decode()
    assert "Watch" in listing
    assert 'href="/agents/new/"' not in listing
    page = viewer.get(f"/agents/runs/{run.pk}/").content.decode()
    assert "data-control-form" not in page
    assert "A member who may run agents decides." in page
    assert viewer.get("/agents/new/").status_code == 403
    assert viewer.post(f"/agents/runs/{run.pk}/cancel/").status_code == 403
    with in_alpha(alpha):
        run.refresh_from_db()
    assert run.state == "waiting_for_approval"


def test_an_unknown_run_is_a_404_page(alpha: World) -> None:
    amy = client_for(alpha.amy, alpha.alpha)
    assert amy.get("/agents/runs/00000000-0000-0000-0000-000000000000/").status_code == 404
    assert amy.post("/agents/runs/00000000-0000-0000-0000-000000000000/cancel/").status_code == 404


@override_settings(AGENTS_ORG_CONCURRENCY=0)
def test_a_queued_run_shows_its_place_in_line(
    alpha: World, workspace: Workspace, django_capture_on_commit_callbacks: Any
) -> None:
    amy = client_for(alpha.amy, alpha.alpha)
    with django_capture_on_commit_callbacks(execute=True):
        amy.post("/agents/new/", {"workspace": workspace.pk, "task": "first", "priority": "interactive"})
    with in_alpha(alpha):
        run = AgentRun.objects.get()
    page = amy.get(f"/agents/runs/{run.pk}/").content.decode()
    assert "Place in the queue: <strong data-queue-number>1</strong>" in page


def _profile_form(**overrides: Any) -> dict[str, Any]:
    form = {
        "name": "careful",
        "model": "auto",
        "role": "",
        "tools": "bash\nstr_replace_editor",
        "max_steps": "20",
        "max_cost": "0.5",
        "max_seconds": "600",
        "confirmation": "on",
        "risk_patterns": "",
    }
    return {**form, **overrides}


def test_a_manager_adds_changes_and_deletes_a_profile_from_the_page(alpha: World) -> None:
    alice = client_for(alpha.alice, alpha.alpha)
    added = alice.post("/agents/profiles/new/", _profile_form())
    assert added.status_code == 302
    with in_alpha(alpha):
        profile = AgentProfile.objects.get(name="careful")
    assert (profile.tools, profile.max_steps, profile.confirmation) == (
        ["bash", "str_replace_editor"],
        20,
        True,
    )
    listing = alice.get("/agents/profiles/").content.decode()
    assert "careful" in listing
    assert "<code>bash</code>" in listing

    saved = alice.post(f"/agents/profiles/{profile.pk}/", _profile_form(max_steps="40", confirmation=""))
    assert saved.status_code == 302
    with in_alpha(alpha):
        profile.refresh_from_db()
    assert (profile.max_steps, profile.confirmation) == (40, False)

    assert alice.post(f"/agents/profiles/{profile.pk}/delete/").status_code == 302
    with in_alpha(alpha):
        assert not AgentProfile.objects.exists()


def test_profile_mistakes_are_shown_on_their_field(alpha: World) -> None:
    alice = client_for(alpha.alice, alpha.alpha)
    unknown = alice.post("/agents/profiles/new/", _profile_form(model="no-such-model"))
    assert unknown.status_code == 400
    assert "Unknown model" in unknown.content.decode()
    alice.post("/agents/profiles/new/", _profile_form())
    taken = alice.post("/agents/profiles/new/", _profile_form())
    assert taken.status_code == 409
    assert "A profile with this name exists" in taken.content.decode()
    bad_pattern = alice.post("/agents/profiles/new/", _profile_form(name="other", risk_patterns="(unclosed"))
    assert bad_pattern.status_code == 400
    assert "not a valid regular expression" in bad_pattern.content.decode()
    with in_alpha(alpha):
        assert list(AgentProfile.objects.values_list("name", flat=True)) == ["careful"]


def test_members_see_profiles_but_only_managers_change_them(alpha: World) -> None:
    profile = AgentProfile.objects.create(name="shared", max_steps=9)
    amy = client_for(alpha.amy, alpha.alpha)
    listing = amy.get("/agents/profiles/").content.decode()
    assert "shared" in listing
    assert "Add a profile" not in listing
    page = amy.get(f"/agents/profiles/{profile.pk}/").content.decode()
    assert "Owners and admins change profiles." in page
    assert amy.post("/agents/profiles/new/", _profile_form()).status_code == 403
    assert amy.post(f"/agents/profiles/{profile.pk}/", _profile_form(name="shared")).status_code == 403
    assert amy.post(f"/agents/profiles/{profile.pk}/delete/").status_code == 403
    with in_alpha(alpha):
        profile.refresh_from_db()
    assert profile.max_steps == 9
