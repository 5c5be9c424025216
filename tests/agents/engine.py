"""Fixtures and helpers for the run engine's tests (apps/agents: services, loop, tasks).

Runs go through the real services, the real pool, a real Celery worker and a real
sandbox; the model is the loopback OpenAI fake (real SDK, real HTTP), scripted per test,
reached through Alpha's and Beta's own OpenAI credentials. Everything a test makes is
committed (the worker must see it) and removed afterwards.

    from tests.agents.engine import agent_fake, agent_llm, llm, sample_workspace  # noqa: F401 (fixtures)
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django_tenants.utils import schema_context

from apps.agents import pool, services
from apps.agents.models import AgentProfile, AgentRun, Event
from apps.core.errors import ServiceError
from apps.llm.gateway import gateway_reset
from apps.llm.services import credential_delete, credential_set
from apps.tenancy.audit import Actor
from apps.tenancy.models import Organization
from apps.workspaces import services as workspace_services
from apps.workspaces.models import Workspace
from tests.conftest import World, wait_for
from tests.fakes.llm_fake import Reply
from tests.fakes.openai_server import FakeOpenAI, openai_server

MODEL = "gpt-4o-mini"
IDENTITY = {
    "GIT_AUTHOR_NAME": "Fixture",
    "GIT_AUTHOR_EMAIL": "fixture@example.test",
    "GIT_COMMITTER_NAME": "Fixture",
    "GIT_COMMITTER_EMAIL": "fixture@example.test",
}
# A small repository with a failing test: add() subtracts.
SAMPLE_REPOSITORY = """
set -e
mkdir -p sample && cd sample
git init -q -b main
printf 'def add(a, b):\\n    return a - b\\n' > calc.py
printf '__pycache__/\\n' > .gitignore
cat > test_calc.py <<'PY'
import unittest

from calc import add


class AddTest(unittest.TestCase):
    def test_adds(self):
        self.assertEqual(add(2, 3), 5)
PY
git add . && git commit -qm 'Sample with a failing test'
"""


@pytest.fixture(scope="session")
def agent_fake() -> Iterator[FakeOpenAI]:
    """The OpenAI fake, one for the session: the worker keeps an organization's settings
    for a few seconds, so its address must not change between modules."""
    with openai_server() as fake:
        yield fake


@pytest.fixture(scope="module")
def agent_llm(django_db_setup: World, django_db_blocker: Any, agent_fake: FakeOpenAI) -> Iterator[FakeOpenAI]:
    """Alpha's and Beta's own OpenAI credentials leading to the fake, for one module of
    tests: later modules (the LLM endpoint's tests) expect organizations without them."""
    world = django_db_setup
    with django_db_blocker.unblock():
        for organization, owner in ((world.alpha, world.alice), (world.beta, world.bob)):
            credential_set(
                organization=organization,
                provider="openai",
                api_key="sk-agents-test",
                base_url=agent_fake.base_url,
                actor=Actor(user=owner),
            )
        gateway_reset()
        # A worker process may hold the organizations' settings from before (without these
        # credentials) for LLM_CONFIG_CACHE_SECONDS; its runs would go to the local model.
        time.sleep(float(getattr(settings, "LLM_CONFIG_CACHE_SECONDS", 5)))
        yield agent_fake
        for organization, owner in ((world.alpha, world.alice), (world.beta, world.bob)):
            with suppress(ServiceError):
                credential_delete(organization=organization, provider="openai", actor=Actor(user=owner))
        gateway_reset()


def _runs_settled(world: World, fake: FakeOpenAI) -> None:
    """No earlier test's run may take this test's scripted answers from the shared fake: the
    runs still going are cancelled and waited out, then the fake must have been quiet for a
    moment (a step of a run deleted mid-step may still be asking the model)."""
    for organization, owner in ((world.alpha, world.alice), (world.beta, world.bob)):
        with schema_context(organization.schema_name):
            for run in AgentRun.objects.exclude(state__in=AgentRun.FINISHED):
                with suppress(ServiceError):
                    services.run_cancel(actor=Actor(user=owner), organization=organization, run=run)

    def finished() -> bool:
        for organization in (world.alpha, world.beta):
            with schema_context(organization.schema_name):
                if AgentRun.objects.exclude(state__in=AgentRun.FINISHED).exists():
                    return False
        return True

    wait_for(finished, timeout=60)
    seen = -1
    while seen != len(fake.requests):
        seen = len(fake.requests)
        time.sleep(0.5)


@pytest.fixture
def llm(django_db_setup: World, django_db_blocker: Any, agent_llm: FakeOpenAI) -> Iterator[FakeOpenAI]:
    """The fake with nothing scripted and no request recorded."""
    with django_db_blocker.unblock():
        _runs_settled(django_db_setup, agent_llm)
    agent_llm.reset()
    yield agent_llm
    agent_llm.reset()


def make_workspace(
    world: World, organization: Organization | None = None, *, setup: str = SAMPLE_REPOSITORY
) -> Workspace:
    organization = organization or world.alpha
    owner = world.alice if organization == world.alpha else world.bob
    with schema_context(organization.schema_name):
        workspace = workspace_services.workspace_create(
            actor=Actor(user=owner),
            organization=organization,
            name=f"agents-{uuid.uuid4().hex[:8]}",
            memory_mb=512,
            disk_mb=256,
        )
        if setup:
            outcome = workspace_services.workspace_exec(
                actor=Actor(user=owner), workspace=workspace, command=setup, env=IDENTITY, timeout=60
            )
            assert outcome.exit_code == 0, outcome.stderr
    return workspace


def remove_workspace(world: World, workspace: Workspace, organization: Organization | None = None) -> None:
    """The workspace's runs (their events go with them) and its sandbox."""
    organization = organization or world.alpha
    owner = world.alice if organization == world.alpha else world.bob
    with schema_context(organization.schema_name):
        for run_id in AgentRun.objects.filter(workspace=workspace).values_list("pk", flat=True):
            pool.release(run_id=run_id)
        AgentRun.objects.filter(workspace=workspace).delete()
        with suppress(ServiceError):
            workspace_services.workspace_destroy(
                actor=Actor(user=owner), organization=organization, workspace=workspace
            )


@pytest.fixture(scope="session")
def _distinct_sandbox_ids(django_db_setup: World, django_db_blocker: Any) -> None:
    """Workspace ids of this session far from other sessions' on the same machine: the
    runtime names a sandbox's cgroup by organization and id only, so two test sessions'
    `org_alpha/ws-1` would take each other's sandbox down."""
    world = django_db_setup
    with django_db_blocker.unblock():
        for organization in (world.alpha, world.beta):
            with schema_context(organization.schema_name), connection.cursor() as cursor:
                cursor.execute(
                    "SELECT setval(pg_get_serial_sequence('workspaces_workspace', 'id'),"
                    " GREATEST((SELECT COALESCE(max(id), 0) FROM workspaces_workspace), %s))",
                    [secrets.randbelow(10**9) + 10**6],
                )


@pytest.fixture
def sample_workspace(
    live_db: World, runtime_server: Any, celery_worker: Any, _distinct_sandbox_ids: None
) -> Iterator[Workspace]:
    """A running workspace of Alpha holding `sample/`, a git repository whose test fails."""
    workspace = make_workspace(live_db)
    yield workspace
    remove_workspace(live_db, workspace)


def profile(world: World, organization: Organization | None = None, **fields: Any) -> AgentProfile:
    organization = organization or world.alpha
    owner = world.alice if organization == world.alpha else world.bob
    fields.setdefault("name", f"profile-{uuid.uuid4().hex[:8]}")
    fields.setdefault("model", MODEL)
    with schema_context(organization.schema_name):
        return services.profile_create(actor=Actor(user=owner), organization=organization, **fields)


def remove_profile(world: World, found: AgentProfile, organization: Organization | None = None) -> None:
    organization = organization or world.alpha
    with schema_context(organization.schema_name):
        AgentProfile.objects.filter(pk=found.pk).delete()


def start(world: World, workspace: Workspace, task: str, found: AgentProfile | None = None) -> AgentRun:
    """A run of Alice's in Alpha, through the real service (the pool starts it)."""
    if found is None:
        found = profile(world)
    with schema_context(world.alpha.schema_name):
        return services.run_create(
            actor=Actor(user=world.alice),
            organization=world.alpha,
            workspace=workspace,
            task=task,
            profile=found,
        )


def fetch(world: World, run: AgentRun) -> AgentRun:
    with schema_context(world.alpha.schema_name):
        return AgentRun.objects.get(pk=run.pk)


def wait_state(world: World, run: AgentRun, *states: str, timeout: float = 60.0) -> AgentRun:
    wanted = states or tuple(AgentRun.FINISHED)

    def reached() -> AgentRun | None:
        fresh = fetch(world, run)
        return fresh if fresh.state in wanted else None

    try:
        found: AgentRun = wait_for(reached, timeout=timeout, interval=0.2)
        return found
    except AssertionError:
        fresh = fetch(world, run)
        raise AssertionError(
            f"run still {fresh.state} ({fresh.state_reason}) after {timeout} s; events: {events(world, run)}"
        ) from None


def events(world: World, run: AgentRun, kind: str | None = None) -> list[Event]:
    with schema_context(world.alpha.schema_name):
        found = Event.objects.filter(run_id=run.pk).order_by("seq")
        if kind:
            found = found.filter(kind=kind)
        return list(found)


def as_alice(world: World) -> Actor:
    return Actor(user=world.alice)


def tool(name: str, **arguments: Any) -> Reply:
    return Reply.tool(name, arguments)


def bash(command: str, **kwargs: Any) -> Reply:
    return Reply.tool("bash", {"command": command}, **kwargs)


def finish(answer: str = "Done.") -> Reply:
    return Reply.tool("finish", {"answer": answer})
