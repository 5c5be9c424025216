"""Agent pool tests: a third organization beside Alpha and Beta, runs to put in line, and
a way to submit and release as the run engine does (the dispatch after commit included).

Tests under `db` run in a transaction that never commits, so `transaction.on_commit`
callbacks (the dispatch that submit and release schedule) are run by Django's own
capture at the end of each call, as a real commit would."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest
from django_tenants.utils import schema_context

from apps.agents.models import AgentRun
from apps.scheduling import services
from apps.scheduling.models import RunTicket
from apps.tenancy import services as tenancy_services
from apps.tenancy.models import Organization
from tests.conftest import World

CaptureCallbacks = Callable[..., AbstractContextManager[list[Callable[[], Any]]]]


@pytest.fixture
def gamma(world: World) -> Organization:
    """A third organization, made inside the test's transaction (gone after it)."""
    organization = tenancy_services.organization_create(
        name="Gamma", slug="gamma", created_by=world.olga, provision_async=False
    )
    return tenancy_services.organization_provision(organization_id=organization.pk)


def make_runs(organization: Organization, count: int, *, priority: str = "interactive") -> list[uuid.UUID]:
    with schema_context(organization.schema_name):
        return [
            AgentRun.objects.create(task=f"task {number} of {organization.slug}", priority=priority).pk
            for number in range(count)
        ]


class Pool:
    """Submit and release the way the run engine does, with the after-commit dispatch run."""

    def __init__(self, capture: CaptureCallbacks) -> None:
        self._capture = capture

    def submit(
        self, organization: Organization, run_ids: list[uuid.UUID], *, priority: str = "interactive"
    ) -> None:
        for run_id in run_ids:
            with self._capture(execute=True):
                services.pool_submit(organization=organization, run_id=run_id, priority=priority)

    def release(self, run_id: uuid.UUID) -> bool:
        with self._capture(execute=True):
            return services.pool_release(run_id=run_id)

    def started(self) -> list[RunTicket]:
        """Tickets holding a slot, in the order they got it."""
        return list(RunTicket.objects.filter(started_at__isnull=False).order_by("dispatch_number"))

    def started_ids(self) -> set[uuid.UUID]:
        return {ticket.run_id for ticket in self.started()}

    def waiting_ids(self) -> set[uuid.UUID]:
        return set(RunTicket.objects.filter(started_at__isnull=True).values_list("run_id", flat=True))


# Where the runs these tests start send their steps: a queue no worker takes, so a worker
# that other tests started never drives (and ends, and releases) these runs behind a
# test's back.
STEP_QUEUE = "agentyard-scheduling-tests-steps"


@pytest.fixture
def idle_steps(settings: Any) -> Iterator[None]:
    settings.AGENTS_STEP_QUEUE = STEP_QUEUE
    yield
    purge_step_tasks()


@pytest.fixture
def pool(
    world: World, django_capture_on_commit_callbacks: CaptureCallbacks, settings: Any, idle_steps: None
) -> Pool:
    settings.AGENTS_POOL_SIZE = 3
    settings.AGENTS_ORG_CONCURRENCY = 3
    return Pool(django_capture_on_commit_callbacks)


def purge_step_tasks() -> None:
    """The first steps of the runs started here (their runs are gone with the test's data)."""
    from config.celery import app

    with app.connection_for_write() as connection:
        channel: Any = connection.default_channel  # kombu's channels are untyped
        channel.queue_purge(STEP_QUEUE)


def forget_runs_knowledge(organization: Organization, run_ids: list[uuid.UUID]) -> None:
    """What the runs' ends distilled into the organization's experience (the knowledge app's
    end-of-run hook, which the worker runs just after a run ends), gone with the runs: other
    tests expect an organization without knowledge. The experience source goes too once
    nothing else of it is left."""
    from apps.knowledge.models import KnowledgeChunk, KnowledgeRunSync, KnowledgeSource
    from apps.knowledge.services import source_delete
    from apps.tenancy.audit import Actor

    names = [str(run_id) for run_id in run_ids]
    with schema_context(organization.schema_name):
        deadline = time.monotonic() + 30
        distilled = KnowledgeRunSync.objects.filter(run_id__in=names)
        while distilled.count() < len(names) and time.monotonic() < deadline:
            time.sleep(0.2)
        distilled.delete()
        KnowledgeChunk.objects.filter(run_id__in=names).delete()
        for source in KnowledgeSource.objects.filter(kind=KnowledgeSource.Kind.EXPERIENCE):
            if not KnowledgeChunk.objects.filter(source=source).exists():
                source_delete(organization=organization, source=source, actor=Actor.system())
