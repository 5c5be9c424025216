"""Acceptance: 30 runs of 3 organizations go through the real agent pool, a real Celery
worker, real sandboxes and the scripted model (the OpenAI fake answers `finish` at once),
all complete, and their start times interleave fairly although one organization queued
its 20 runs first.

The pool here is 3 runs (3 per organization), in this process and in a worker of this
test's own (its settings come from its environment), which takes the runs' steps from a
queue of their own. The runs are queued while the pool has no slot, as when it is busy
with other work, so the start order depends on the pool's rule and not on how fast this
test submits."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from datetime import datetime
from typing import Any

import pytest
from django.conf import settings
from django_tenants.utils import schema_context

from apps.agents import services as agent_services
from apps.agents.models import AgentRun
from apps.core.errors import ServiceError
from apps.llm.services import credential_set
from apps.scheduling.services import pool_dispatch
from apps.tenancy import services as tenancy_services
from apps.tenancy.audit import Actor
from apps.tenancy.models import Organization
from apps.workspaces import services as workspace_services
from apps.workspaces.models import Workspace
from tests.agents.engine import MODEL, finish
from tests.conftest import ARTIFACTS, ROOT, World, _worker_env, wait_for
from tests.factories import make_user
from tests.fakes.openai_server import FakeOpenAI
from tests.scheduling.conftest import forget_runs_knowledge

POOL_SIZE = 3
STEP_QUEUE = f"{settings.CELERY_TASK_DEFAULT_QUEUE}-pool-e2e"
WORKER_NAME = f"pool-e2e@{socket.gethostname()}"


@pytest.fixture
def pool_worker(live_db: World, runtime_server: Any, settings: Any) -> Iterator[subprocess.Popen[bytes]]:
    """A worker whose pool is POOL_SIZE, taking the runs' steps from STEP_QUEUE."""
    from config.celery import app

    settings.AGENTS_STEP_QUEUE = STEP_QUEUE
    settings.AGENTS_ORG_CONCURRENCY = POOL_SIZE
    env = {
        **_worker_env(),
        "AGENTS_POOL_SIZE": str(POOL_SIZE),
        "AGENTS_ORG_CONCURRENCY": str(POOL_SIZE),
        "AGENTS_STEP_QUEUE": STEP_QUEUE,
    }
    ARTIFACTS.mkdir(exist_ok=True)
    app.control.purge()
    with (ARTIFACTS / "celery-pool-e2e.log").open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel=INFO",
                "--pool=solo", "-Q", STEP_QUEUE, "--hostname", WORKER_NAME,
                "--without-mingle", "--without-gossip",
            ],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while not app.control.ping(destination=[WORKER_NAME], timeout=0.5):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "the pool's worker did not start; see test-artifacts/celery-pool-e2e.log"
                    )
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


class Tenant:
    """An organization with an owner, a running workspace and a profile on the fake model."""

    def __init__(self, organization: Organization, owner: Any) -> None:
        self.organization = organization
        self.actor = Actor(user=owner)
        with schema_context(organization.schema_name):
            self.workspace = workspace_services.workspace_create(
                actor=self.actor,
                organization=organization,
                name=f"pool-{uuid.uuid4().hex[:8]}",
                memory_mb=512,
                disk_mb=256,
            )
            self.profile = agent_services.profile_create(
                actor=self.actor, organization=organization, name=f"pool-{uuid.uuid4().hex[:8]}", model=MODEL
            )
        self.runs: list[uuid.UUID] = []

    def queue(self, count: int) -> None:
        with schema_context(self.organization.schema_name):
            for number in range(count):
                run = agent_services.run_create(
                    actor=self.actor,
                    organization=self.organization,
                    workspace=self.workspace,
                    task=f"Say you are done ({number}).",
                    profile=self.profile,
                )
                self.runs.append(run.pk)

    def fetch_runs(self) -> list[AgentRun]:
        with schema_context(self.organization.schema_name):
            return list(AgentRun.objects.filter(pk__in=self.runs))

    def remove(self) -> None:
        forget_runs_knowledge(self.organization, self.runs)
        with schema_context(self.organization.schema_name):
            AgentRun.objects.filter(pk__in=self.runs).delete()
            with suppress(ServiceError):
                workspace_services.workspace_destroy(
                    actor=self.actor, organization=self.organization, workspace=self.workspace
                )
            Workspace.objects.filter(pk=self.workspace.pk).delete()
            self.profile.delete()


@pytest.fixture
def tenants(live_db: World, llm: FakeOpenAI, pool_worker: Any) -> Iterator[dict[str, Tenant]]:
    gina = make_user("gina@gamma.test", "Gina")
    gamma = tenancy_services.organization_create(
        name="Gamma", slug="gamma", created_by=gina, provision_async=False
    )
    made: dict[str, Tenant] = {}
    try:
        gamma = tenancy_services.organization_provision(organization_id=gamma.pk)
        credential_set(
            organization=gamma,
            provider="openai",
            api_key="sk-agents-test",
            base_url=llm.base_url,
            actor=Actor(user=gina),
        )
        made["alpha"] = Tenant(live_db.alpha, live_db.alice)
        made["beta"] = Tenant(live_db.beta, live_db.bob)
        made["gamma"] = Tenant(gamma, gina)
        yield made
    finally:
        for tenant in made.values():
            tenant.remove()
        tenancy_services.organization_delete(organization=Organization.objects.get(pk=gamma.pk))
        gina.delete()


def _most_at_once(runs: list[AgentRun]) -> int:
    moments: list[tuple[datetime, int]] = []
    for run in runs:
        assert run.started_at is not None
        assert run.finished_at is not None
        moments += [(run.started_at, 1), (run.finished_at, -1)]
    most = current = 0
    for _, change in sorted(moments, key=lambda moment: (moment[0], moment[1])):
        current += change
        most = max(most, current)
    return most


def test_thirty_runs_of_three_organizations_complete_with_fairly_interleaved_starts(
    live_db: World, llm: FakeOpenAI, tenants: dict[str, Tenant], settings: Any
) -> None:
    llm.script(*[finish("Done.") for _ in range(30)])
    settings.AGENTS_POOL_SIZE = 0  # busy: everything queues
    tenants["alpha"].queue(20)  # Alpha's twenty first
    tenants["beta"].queue(5)
    tenants["gamma"].queue(5)

    settings.AGENTS_POOL_SIZE = POOL_SIZE
    assert len(pool_dispatch()) == POOL_SIZE

    def everything_finished() -> list[AgentRun] | None:
        runs = [run for tenant in tenants.values() for run in tenant.fetch_runs()]
        return runs if all(run.finished for run in runs) else None

    runs = wait_for(everything_finished, timeout=300, interval=0.5)
    assert [run.state_reason for run in runs if run.state != AgentRun.State.SUCCEEDED] == []
    owner = {run_id: name for name, tenant in tenants.items() for run_id in tenant.runs}
    by_start = sorted(runs, key=lambda run: run.started_at or datetime.max.replace(tzinfo=None))
    order = [owner[run.pk] for run in by_start]

    # Beta's and Gamma's first runs start with Alpha's first, not after its twenty.
    assert set(order[:3]) == {"alpha", "beta", "gamma"}, order
    # While all three have runs waiting, each round of three starts serves each once.
    for start in range(0, 15, 3):
        assert set(order[start : start + 3]) == {"alpha", "beta", "gamma"}, order
    assert order[15:] == ["alpha"] * 15, order
    assert _most_at_once(runs) <= POOL_SIZE
