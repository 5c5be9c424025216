"""The knowledge hook in a run's context: what the organization knows that is relevant
to the task reaches the model beside the task (and never another organization's), and
a run's end distils its session into the organization's experience."""

from __future__ import annotations

from typing import Any

import pytest
from django_tenants.utils import schema_context

from apps.agents import context, loop, services
from apps.agents.models import AgentRun, Event
from apps.agents.tools.registry import tools_for
from apps.knowledge.models import KnowledgeRunSync
from apps.tenancy.audit import Actor
from apps.workspaces.models import Workspace
from tests.conftest import World
from tests.knowledge.conftest import knowledge_index, make_source, put_file  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("knowledge_index")]

RELEASES = """# Releases

## Shipping
Deployments go out with `make ship` from the release branch, never from main.
The release manager tags the commit first.
"""
HOTFIXES = """# Hotfixes

## Shipping a hotfix
Ship the release of a hotfix with `make ship-hotfix`; deployments of hotfixes go out from the hotfix branch.
"""
TASK = "Ship the release: how do deployments go out?"


def _run(world: World, organization: Any, owner: Any) -> AgentRun:
    workspace = Workspace.objects.create(name="knowledge-home", state=Workspace.State.RUNNING)
    return services.run_create(
        actor=Actor(user=owner), organization=organization, workspace=workspace, task=TASK
    )


def _conversation(organization: Any, run: AgentRun) -> list[Any]:
    events = list(Event.objects.filter(run=run).order_by("seq"))
    return context.conversation(organization=organization, run=run, events=events, toolbox=tools_for(run))


def test_a_runs_context_holds_its_organizations_relevant_knowledge(world: World) -> None:
    with schema_context(world.alpha.schema_name):
        put_file(make_source(world, world.alpha, name="releases.md"), "releases.md", RELEASES)
        run = _run(world, world.alpha, world.alice)
        system, task, *rest = _conversation(world.alpha, run)

    assert system.role == "system"
    assert TASK in system.content
    assert task.role == "user"
    assert task.pinned  # never windowed out
    assert task.content.startswith(TASK)
    assert "Relevant knowledge" in task.content
    assert "`make ship` from the release branch" in task.content
    assert "releases.md" in task.content  # where it comes from, to cite
    assert rest == []

    # Later steps read the same first message, though the knowledge grew meanwhile: the
    # prompt's prefix stays what providers' prompt caches hold; knowledge_search finds more.
    with schema_context(world.alpha.schema_name):
        put_file(make_source(world, world.alpha, name="hotfix.md"), "hotfix.md", HOTFIXES)
        _, later = _conversation(world.alpha, run)
    assert later.content == task.content
    assert "hotfix" not in later.content

    with schema_context(world.beta.schema_name):
        theirs = _run(world, world.beta, world.bob)
        _, beta_task = _conversation(world.beta, theirs)
    assert "make ship" not in beta_task.content


def test_a_runs_end_distils_its_session_into_experience(world: World) -> None:
    with schema_context(world.alpha.schema_name):
        run = _run(world, world.alpha, world.alice)
        run.state, run.result = AgentRun.State.SUCCEEDED, {"answer": "Shipped with make ship."}
        loop.run_end_hook(organization=world.alpha, run=run)
        record = KnowledgeRunSync.objects.get(run_id=str(run.pk))
    assert record.outcome == "succeeded"
