"""Starting runs and editing profiles through the services: bad input is a clear 4xx
naming the field and leaves nothing behind; a run copies its profile's settings."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.test import override_settings
from django_tenants.utils import schema_context

from apps.agents import services
from apps.agents.models import AgentProfile, AgentRun, Event
from apps.core.errors import Conflict, Invalid, ServiceError
from apps.tenancy.audit import Actor
from apps.workspaces.models import Workspace
from tests.conftest import World

pytestmark = pytest.mark.django_db


@pytest.fixture
def alpha(world: World):
    with schema_context(world.alpha.schema_name):
        yield world


def _workspace(state: str = Workspace.State.RUNNING, name: str = "") -> Workspace:
    return Workspace.objects.create(name=name or f"agent-home-{Workspace.objects.count()}", state=state)


def _create(world: World, **kwargs) -> AgentRun:
    kwargs.setdefault("workspace", _workspace())
    kwargs.setdefault("task", "Fix the failing test.")
    return services.run_create(actor=Actor(user=world.alice), organization=world.alpha, **kwargs)


def _refused(world: World, **kwargs) -> ServiceError:
    with pytest.raises(ServiceError) as refused:
        _create(world, **kwargs)
    assert AgentRun.objects.count() == 0
    assert Event.objects.count() == 0
    return refused.value


def test_a_run_is_queued_with_its_first_events_and_a_copy_of_its_profile(alpha: World) -> None:
    profile = services.profile_create(
        actor=Actor(user=alpha.alice),
        organization=alpha.alpha,
        name="careful",
        model="gpt-4o-mini",
        max_steps=7,
        max_cost="0.5",
        confirmation=True,
        tools=["bash", "finish"],
    )
    run = _create(alpha, profile=profile, priority="batch")

    assert run.state == AgentRun.State.QUEUED
    assert run.priority == "batch"
    assert run.created_by_id == alpha.alice.pk
    assert run.settings["model"] == "gpt-4o-mini"
    assert run.settings["max_steps"] == 7
    assert run.settings["max_cost"] == "0.500000"
    assert run.settings["confirmation"] is True
    assert run.settings["tools"] == ["bash", "finish"]
    first, second = Event.objects.filter(run=run).order_by("seq")
    assert (first.seq, first.kind, first.payload) == (1, "state", {"state": "queued", "reason": "Created"})
    assert (second.seq, second.kind, second.payload) == (
        2,
        "message",
        {"role": "user", "text": "Fix the failing test."},
    )

    # Editing the profile later does not change the run.
    services.profile_update(
        actor=Actor(user=alpha.alice), organization=alpha.alpha, profile=profile, max_steps=99
    )
    run.refresh_from_db()
    assert run.settings["max_steps"] == 7


def test_a_run_without_a_profile_uses_the_defaults(alpha: World) -> None:
    run = _create(alpha)
    assert run.settings["model"] == "auto"
    assert run.settings["max_steps"] == 50
    assert run.settings["profile"] is None


def test_an_unknown_workspace_is_refused(alpha: World) -> None:
    error = _refused(alpha, workspace=987654)
    assert isinstance(error, Invalid)
    assert (error.status, error.field, error.message) == (400, "workspace", "No such workspace.")


def test_a_stopped_workspace_is_refused_with_what_to_do(alpha: World) -> None:
    error = _refused(alpha, workspace=_workspace(Workspace.State.STOPPED, "parked"))
    assert error.status == 400
    assert error.code == "workspace_not_running"
    assert error.message == "The workspace parked is stopped; start it before running an agent on it."


def test_an_unknown_profile_is_refused(alpha: World) -> None:
    error = _refused(alpha, profile=424242)
    assert (error.status, error.field, error.code) == (400, "profile", "profile_not_found")


@override_settings(AGENTS_MAX_TASK_CHARS=100)
def test_a_task_over_the_size_limit_is_refused(alpha: World) -> None:
    error = _refused(alpha, task="x" * 101)
    assert (error.status, error.field, error.code) == (400, "task", "task_too_long")
    assert "101 characters; at most 100" in error.message
    assert _create(alpha, task="x" * 100).task == "x" * 100


@pytest.mark.parametrize("task", ["", "   ", None, 42])
def test_an_empty_task_is_refused(alpha: World, task) -> None:
    assert _refused(alpha, task=task).field == "task"


def test_an_unknown_priority_is_refused(alpha: World) -> None:
    assert _refused(alpha, priority="urgent").field == "priority"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "p", "model": "gpt-99"}, "model"),
        ({"name": "p", "prompt_template": "no.such.template"}, "prompt_template"),
        ({"name": "p", "prompt_version": 3}, "prompt_version"),
        ({"name": "p", "max_steps": 0}, "max_steps"),
        ({"name": "p", "max_seconds": True}, "max_seconds"),
        ({"name": "p", "max_cost": "-1"}, "max_cost"),
        ({"name": "p", "max_cost": "lots"}, "max_cost"),
        ({"name": "p", "tools": "bash"}, "tools"),
        ({"name": "p", "risk_patterns": ["(unclosed"]}, "risk_patterns"),
        ({"name": "p", "confirmation": "yes"}, "confirmation"),
        ({"name": "p", "colour": "blue"}, "colour"),
    ],
)
def test_a_bad_profile_is_refused_naming_the_field(alpha: World, fields, field) -> None:
    with pytest.raises(Invalid) as refused:
        services.profile_create(actor=Actor(user=alpha.alice), organization=alpha.alpha, **fields)
    assert refused.value.field == field
    assert not AgentProfile.objects.exists()


def test_a_profile_name_is_unique(alpha: World) -> None:
    services.profile_create(actor=Actor(user=alpha.alice), organization=alpha.alpha, name="same")
    with pytest.raises(Conflict):
        services.profile_create(actor=Actor(user=alpha.alice), organization=alpha.alpha, name="same")


def test_a_profile_keeps_the_cost_it_was_given(alpha: World) -> None:
    profile = services.profile_create(
        actor=Actor(user=alpha.alice), organization=alpha.alpha, name="thrifty", max_cost=Decimal("0.25")
    )
    assert profile.max_cost == Decimal("0.25")


def test_pausing_or_cancelling_a_queued_run_takes_effect_at_once(alpha: World) -> None:
    run = _create(alpha)
    paused = services.run_pause(actor=Actor(user=alpha.alice), organization=alpha.alpha, run=run)
    assert paused.state == AgentRun.State.PAUSED
    resumed = services.run_resume(actor=Actor(user=alpha.alice), organization=alpha.alpha, run=run)
    assert resumed.state == AgentRun.State.QUEUED
    cancelled = services.run_cancel(actor=Actor(user=alpha.alice), organization=alpha.alpha, run=run)
    assert cancelled.state == AgentRun.State.CANCELLED
    assert cancelled.state_reason == "Cancelled by alice@alpha.test"
    with pytest.raises(Conflict) as again:
        services.run_cancel(actor=Actor(user=alpha.alice), organization=alpha.alpha, run=run)
    assert again.value.status == 409
    states = [e.payload["state"] for e in Event.objects.filter(run=run, kind="state").order_by("seq")]
    assert states == ["queued", "paused", "queued", "cancelled"]


def test_a_run_cannot_be_committed_before_it_ends(alpha: World) -> None:
    run = _create(alpha)
    with pytest.raises(Conflict, match="Wait until the run has ended"):
        services.run_commit(actor=Actor(user=alpha.alice), organization=alpha.alpha, run=run, message="x")


def test_a_run_is_not_started_in_another_organizations_schema(alpha: World) -> None:
    with pytest.raises(RuntimeError):
        services.run_create(
            actor=Actor(user=alpha.bob), organization=alpha.beta, workspace=_workspace(), task="Sneak in."
        )
    assert AgentRun.objects.count() == 0


def test_a_step_or_start_sent_for_another_organizations_run_touches_nothing(alpha: World) -> None:
    from apps.agents import loop
    from apps.agents.tasks import run_start_dispatched

    run = _create(alpha)
    with schema_context(alpha.beta.schema_name):
        outcome = loop.step_run(run_id=run.pk, number=1)
        run_start_dispatched(alpha.beta.schema_name, str(run.pk))
    assert (outcome.status, outcome.detail) == ("skipped", "no such run")
    run.refresh_from_db()
    assert run.state == AgentRun.State.QUEUED
    assert Event.objects.filter(run=run).count() == 2


def test_a_repeated_or_stale_step_does_nothing(alpha: World) -> None:
    from apps.agents import loop
    from apps.agents.tasks import run_start_dispatched

    run = _create(alpha)
    run_start_dispatched(alpha.alpha.schema_name, str(run.pk))
    run.refresh_from_db()
    assert run.state == AgentRun.State.RUNNING
    assert loop.step_run(run_id=run.pk, number=5).detail == "step 5 is not next (the run has done 0)"
    services.run_cancel(actor=Actor(user=alpha.alice), organization=alpha.alpha, run=run)
    run.refresh_from_db()
    assert run.control == AgentRun.Control.CANCEL
    AgentRun.objects.filter(pk=run.pk).update(state=AgentRun.State.CANCELLED)
    assert loop.step_run(run_id=run.pk, number=1).detail == "the run is cancelled"


def test_a_profiles_allow_list_limits_the_tools_offered_but_never_finish(alpha: World) -> None:
    from apps.agents.tools.registry import tools_for

    everything = tools_for(_create(alpha))
    assert {"bash", "python", "str_replace_editor", "search", "think", "finish"} <= set(everything.names())

    narrow = services.profile_create(
        actor=Actor(user=alpha.alice), organization=alpha.alpha, name="narrow", tools=["bash"]
    )
    toolbox = tools_for(_create(alpha, profile=narrow))
    assert toolbox.names() == ["bash", "finish"]
    assert [tool.name for tool in toolbox.llm_tools()] == ["bash", "finish"]
