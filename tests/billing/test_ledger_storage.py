"""Storage in the billing ledger: the periodic measurement charges each organization
GB-hours for its workspaces' disks (as the real runtime reports them) and its knowledge,
since its previous measurement; once per interval; another organization's storage never
shows in its rows."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.test import override_settings
from django.utils import timezone

from apps.billing.ledger import interval_start, knowledge_bytes, storage_measure
from apps.billing.models import UsageDaily, UsageRecord
from apps.billing.tasks import storage_measure_task
from apps.knowledge.models import KnowledgeChunk, KnowledgeSource
from apps.tenancy.audit import Actor
from apps.workspaces import services
from apps.workspaces.models import Workspace
from tests.conftest import World, free_port
from tests.runtime_server import RuntimeServer
from tests.workspaces.conftest import Cleanup, in_schema, make_workspace

pytestmark = pytest.mark.django_db
GB = Decimal(1_000_000_000)
MIB = 1024 * 1024


def storage_rows(world: World, until: datetime, organization_id: int | None = None) -> dict[str, UsageRecord]:
    return {
        f"{row.source_type}:{row.source_id}": row
        for row in UsageRecord.objects.filter(
            organization_id=organization_id or world.alpha.pk, kind="storage_gb_hours", occurred_at=until
        )
    }


def _workspace_with_a_file(world: World) -> Workspace:
    workspace = make_workspace(world, name="stores-things", disk_mb=256)
    with in_schema(world.alpha):
        services.workspace_file_write(
            actor=Actor(user=world.alice), workspace=workspace, path="data.bin", data=b"x" * (3 * MIB)
        )
    return workspace


def _knowledge_note(world: World, text: str) -> None:
    with in_schema(world.alpha):
        source = KnowledgeSource.objects.create(kind="note", name="ledger note", status="ready")
        KnowledgeChunk.objects.create(
            key=f"ledger-note-{source.pk}", source=source, kind="note", text=text, content_hash="0" * 64
        )


def test_storage_is_measured_per_workspace_and_knowledge_once_per_interval(
    world: World,
    runtime_server: RuntimeServer,
    workspaces_cleanup: Cleanup,
    settings: object,
) -> None:
    settings.BILLING_STORAGE_MEASURE_MINUTES = 60  # type: ignore[attr-defined]
    workspace = _workspace_with_a_file(world)
    workspaces_cleanup.append((world.alpha, workspace))
    with in_schema(world.alpha):
        before = knowledge_bytes()
        _knowledge_note(world, "Ünïcode counts in bytes. " * 40)
        stored_knowledge = knowledge_bytes()
    assert stored_knowledge - before == len(("Ünïcode counts in bytes. " * 40).encode()) + len("{}")
    disk = runtime_server.client().get_sandbox(world.alpha.schema_name, workspace.sandbox_id).disk_used_bytes
    assert disk >= 3 * MIB

    now = timezone.now()
    until = interval_start(now, 60)
    written = storage_measure(now=now)
    assert storage_measure(now=now) == {}  # the same interval again: nothing more
    rows = storage_rows(world, until)
    # The first measurement counts one interval (an hour) of what is stored now.
    assert rows[f"workspace:{workspace.pk}"].quantity == (Decimal(disk) / GB).quantize(Decimal("0.000001"))
    assert rows["system:knowledge"].quantity == (Decimal(stored_knowledge) / GB).quantize(Decimal("0.000001"))
    assert written["alpha"] == sum(row.quantity for row in rows.values())
    for row in rows.values():
        assert row.unit == "GB-hour"
        assert row.unit_price == Decimal(settings.BILLING_DEFAULT_UNIT_PRICES["storage_gb_hours"])  # type: ignore[attr-defined]

    # Three hours later: three hours of it, since the last measurement.
    later = now + timedelta(hours=3)
    storage_measure(now=later)
    later_rows = storage_rows(world, interval_start(later, 60))
    assert later_rows[f"workspace:{workspace.pk}"].quantity == (Decimal(disk) * 3 / GB).quantize(
        Decimal("0.000001")
    )
    daily_total = sum(
        row.quantity
        for row in UsageDaily.objects.filter(
            organization=world.alpha, kind="storage_gb_hours", source_id=str(workspace.pk)
        )
    )
    assert daily_total == (Decimal(disk) * 4 / GB).quantize(Decimal("0.000001"))

    # Beta's measurement holds none of Alpha's storage: Beta has no sandbox, and its
    # knowledge row (if it stores any) is its own.
    beta_rows = storage_rows(world, until, organization_id=world.beta.pk)
    assert [key for key in beta_rows if key.startswith("workspace:")] == []
    with in_schema(world.beta):
        beta_knowledge = knowledge_bytes()
    if beta_knowledge:
        assert beta_rows["system:knowledge"].quantity == (Decimal(beta_knowledge) / GB).quantize(
            Decimal("0.000001")
        )
    else:
        assert beta_rows == {}


def test_with_the_runtime_down_nothing_is_measured_and_the_next_measurement_covers_the_gap(
    world: World,
    runtime_server: RuntimeServer,
    workspaces_cleanup: Cleanup,
    settings: object,
) -> None:
    settings.BILLING_STORAGE_MEASURE_MINUTES = 60  # type: ignore[attr-defined]
    workspace = _workspace_with_a_file(world)
    workspaces_cleanup.append((world.alpha, workspace))
    disk = runtime_server.client().get_sandbox(world.alpha.schema_name, workspace.sandbox_id).disk_used_bytes
    first = timezone.now() + timedelta(days=3)  # clear of the intervals other tests measured
    storage_measure(now=first)
    with override_settings(RUNTIME_ADDRESS=f"127.0.0.1:{free_port()}"):
        assert storage_measure(now=first + timedelta(hours=1)) == {}
    assert storage_rows(world, interval_start(first + timedelta(hours=1), 60)) == {}
    storage_measure(now=first + timedelta(hours=2))
    rows = storage_rows(world, interval_start(first + timedelta(hours=2), 60))
    assert rows[f"workspace:{workspace.pk}"].quantity == (Decimal(disk) * 2 / GB).quantize(
        Decimal("0.000001")
    )
    # Down for 30 hours: at most BILLING_STORAGE_MAX_SPAN_HOURS (24) of the gap is counted.
    settings.BILLING_STORAGE_MAX_SPAN_HOURS = 24  # type: ignore[attr-defined]
    after_outage = first + timedelta(hours=32)
    storage_measure(now=after_outage)
    rows = storage_rows(world, interval_start(after_outage, 60))
    assert rows[f"workspace:{workspace.pk}"].quantity == (Decimal(disk) * 24 / GB).quantize(
        Decimal("0.000001")
    )


def test_the_celery_task_measures_and_is_safe_to_run_twice(
    world: World,
    runtime_server: RuntimeServer,
    workspaces_cleanup: Cleanup,
) -> None:
    workspace = _workspace_with_a_file(world)
    workspaces_cleanup.append((world.alpha, workspace))
    first = storage_measure_task()
    assert "alpha" in first
    assert Decimal(first["alpha"]) > 0
    assert storage_measure_task() == {}
