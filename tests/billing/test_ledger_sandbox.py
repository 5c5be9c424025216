"""Sandbox seconds in the billing ledger: a real sandbox on the real runtime, started and
stopped through the workspaces services, leaves its seconds in the ledger in the stop's
transaction, whichever way it stops; the periodic task accounts running sandboxes once
per interval, and the stop then counts only the rest."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.conf import settings as django_settings
from django.test import override_settings
from django.utils import timezone

from apps.billing.ledger import interval_start
from apps.billing.models import BillingAccount, Plan, UsageDaily, UsageHourly, UsageRecord
from apps.billing.tasks import sandbox_seconds_account_task
from apps.core.errors import Unavailable
from apps.tenancy.audit import Actor
from apps.workspaces import services
from apps.workspaces.models import Workspace
from apps.workspaces.tasks import reconcile_workspaces, stop_idle_workspaces
from tests.conftest import World, free_port
from tests.runtime_server import RuntimeServer
from tests.workspaces.conftest import Cleanup, in_schema, make_workspace

pytestmark = pytest.mark.django_db


def seconds_between(start: datetime, end: datetime) -> Decimal:
    return Decimal(round((end - start) / timedelta(microseconds=1))) / 1_000_000


def sandbox_rows(world: World, workspace: Workspace, organization_id: int | None = None) -> list[UsageRecord]:
    return list(
        UsageRecord.objects.filter(
            organization_id=organization_id or world.alpha.pk,
            kind="sandbox_seconds",
            source_type="workspace",
            source_id=str(workspace.pk),
        ).order_by("occurred_at")
    )


def _stop(world: World, workspace: Workspace, runtime: RuntimeServer) -> datetime:
    services.workspace_stop(actor=Actor(user=world.alice), organization=world.alpha, workspace=workspace)
    workspace.refresh_from_db()
    assert workspace.stopped_at is not None
    return workspace.stopped_at


def _idle(world: World, workspace: Workspace, runtime: RuntimeServer) -> datetime:
    assert workspace.pk in stop_idle_workspaces(now=timezone.now() + timedelta(hours=2))["alpha"]
    workspace.refresh_from_db()
    assert workspace.stopped_at is not None
    return workspace.stopped_at


def _archive(world: World, workspace: Workspace, runtime: RuntimeServer) -> datetime:
    services.workspace_archive(actor=Actor(user=world.alice), organization=world.alpha, workspace=workspace)
    workspace.refresh_from_db()
    assert workspace.stopped_at is not None
    return workspace.stopped_at


def _destroy(world: World, workspace: Workspace, runtime: RuntimeServer) -> datetime:
    services.workspace_destroy(actor=Actor(user=world.alice), organization=world.alpha, workspace=workspace)
    workspace.refresh_from_db()
    assert workspace.deleted_at is not None
    return workspace.deleted_at


def _runtime_lost_it(world: World, workspace: Workspace, runtime: RuntimeServer) -> datetime:
    """The runtime stops the sandbox behind our back (a restart, say); reconciling finds out."""
    runtime.client().stop_sandbox(world.alpha.schema_name, workspace.sandbox_id)
    assert workspace.pk in reconcile_workspaces()["alpha"]
    workspace.refresh_from_db()
    assert workspace.stopped_at is not None
    return workspace.stopped_at


STOPS: dict[str, Callable[[World, Workspace, RuntimeServer], datetime]] = {
    "stop": _stop,
    "idle stop": _idle,
    "archive": _archive,
    "destroy": _destroy,
    "runtime failure": _runtime_lost_it,
}


@pytest.mark.parametrize("how", list(STOPS))
def test_a_stopped_sandbox_leaves_its_seconds_in_the_ledger(
    world: World,
    runtime_server: RuntimeServer,
    workspaces_cleanup: Cleanup,
    how: str,
) -> None:
    workspace = make_workspace(world, name=f"metered-{how.replace(' ', '-')}")
    workspaces_cleanup.append((world.alpha, workspace))
    assert workspace.started_at is not None
    assert sandbox_rows(world, workspace) == []  # nothing while it runs (until the periodic task)
    with in_schema(world.alpha):
        ended = STOPS[how](world, workspace, runtime_server)

    [row] = sandbox_rows(world, workspace)
    price = Decimal(django_settings.BILLING_DEFAULT_UNIT_PRICES["sandbox_seconds"])
    assert row.quantity == seconds_between(workspace.started_at, ended) > 0
    assert (row.unit, row.occurred_at, row.user_id) == ("second", ended, world.alice.pk)
    assert row.unit_price == price  # the test world's plan (Business) prices sandbox seconds at list price
    assert row.amount == (row.quantity * price).quantize(Decimal("0.00000001"))
    hourly = UsageHourly.objects.get(
        organization=world.alpha, kind="sandbox_seconds", source_id=str(workspace.pk)
    )
    daily = UsageDaily.objects.get(
        organization=world.alpha, kind="sandbox_seconds", source_id=str(workspace.pk)
    )
    assert (hourly.quantity, hourly.amount) == (daily.quantity, daily.amount) == (row.quantity, row.amount)


def test_a_stop_the_runtime_cannot_carry_out_charges_nothing(
    world: World,
    runtime_server: RuntimeServer,
    workspaces_cleanup: Cleanup,
) -> None:
    """The runtime unreachable: the stop fails with 503, the workspace keeps running, and
    the ledger has no row for a stop that did not happen (one transaction)."""
    workspace = make_workspace(world, name="unstoppable")
    workspaces_cleanup.append((world.alpha, workspace))
    with override_settings(RUNTIME_ADDRESS=f"127.0.0.1:{free_port()}"), in_schema(world.alpha):
        with pytest.raises(Unavailable):
            _stop(world, workspace, runtime_server)
        workspace.refresh_from_db()
    assert workspace.state == "running"
    assert sandbox_rows(world, workspace) == []


def test_the_periodic_task_accounts_running_sandboxes_once_per_interval(
    world: World,
    runtime_server: RuntimeServer,
    workspaces_cleanup: Cleanup,
    settings: object,
) -> None:
    settings.BILLING_SANDBOX_ACCOUNT_MINUTES = 15  # type: ignore[attr-defined]
    workspace = make_workspace(world, name="long-runner")
    other = make_workspace(world, organization=world.beta, name="beta-runner")
    workspaces_cleanup += [(world.alpha, workspace), (world.beta, other)]
    started = timezone.now() - timedelta(minutes=40)
    for organization, made in ((world.alpha, workspace), (world.beta, other)):
        with in_schema(organization):  # it has been running for 40 minutes
            Workspace.objects.filter(pk=made.pk).update(started_at=started)
            made.refresh_from_db()

    before = timezone.now()
    first = sandbox_seconds_account_task()
    assert sandbox_seconds_account_task() == {}  # run twice: written once
    assert first == {"alpha": 1, "beta": 1}
    [row] = sandbox_rows(world, workspace)
    boundary = row.occurred_at
    assert boundary == interval_start(before, 15) or boundary == interval_start(timezone.now(), 15)
    assert started < boundary <= timezone.now()
    assert row.quantity == seconds_between(started, boundary)
    # Each organization is charged for its own sandbox only.
    [beta_row] = sandbox_rows(world, other, organization_id=world.beta.pk)
    assert beta_row.quantity == row.quantity
    assert (
        UsageRecord.objects.filter(organization=world.alpha, kind="sandbox_seconds")
        .exclude(source_id=str(workspace.pk))
        .filter(occurred_at__gte=started)
        .count()
        == 0
    )

    # The stop counts the rest, from the interval's start: no second is charged twice.
    with in_schema(world.alpha):
        ended = _stop(world, workspace, runtime_server)
    rows = sandbox_rows(world, workspace)
    assert [r.quantity for r in rows] == [
        seconds_between(started, boundary),
        seconds_between(boundary, ended),
    ]
    assert sum(r.quantity for r in rows) == seconds_between(started, ended)
    daily = UsageDaily.objects.filter(
        organization=world.alpha, kind="sandbox_seconds", source_id=str(workspace.pk)
    )
    assert sum(r.quantity for r in daily) == seconds_between(started, ended)
    # Stopped sandboxes are not accounted again.
    assert "alpha" not in sandbox_seconds_account_task()


def test_sandbox_seconds_are_priced_by_the_organizations_plan(
    world: World,
    runtime_server: RuntimeServer,
    workspaces_cleanup: Cleanup,
) -> None:
    plan = Plan.objects.create(
        key="alpha-custom-ledger",
        name="Alpha's deal",
        kind="custom",
        public=False,
        organization=world.alpha,
        unit_prices={"sandbox_seconds": "0.0005"},
    )
    BillingAccount.objects.update_or_create(organization=world.alpha, defaults={"plan": plan})
    workspace = make_workspace(world, name="priced")
    workspaces_cleanup.append((world.alpha, workspace))
    with in_schema(world.alpha):
        _stop(world, workspace, runtime_server)
    [row] = sandbox_rows(world, workspace)
    assert row.unit_price == Decimal("0.0005")
    assert row.amount == (row.quantity * Decimal("0.0005")).quantize(Decimal("0.00000001"))


def test_the_tasks_are_on_celery_beats_schedule() -> None:
    entry = django_settings.CELERY_BEAT_SCHEDULE["billing-sandbox-seconds"]
    assert entry["task"] == sandbox_seconds_account_task.name == "billing.sandbox_seconds_account"
    assert entry["schedule"] == 60.0 * django_settings.BILLING_SANDBOX_ACCOUNT_MINUTES
    assert (
        django_settings.CELERY_BEAT_SCHEDULE["billing-storage-measure"]["task"] == "billing.storage_measure"
    )
