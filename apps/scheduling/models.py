"""The agent pool's record (public schema): one ticket per run waiting for or holding a slot.

PostgreSQL is the truth. A ticket without `started_at` waits; with it, its run holds one of
the pool's slots until `pool_release` deletes the ticket. Nothing lives only in a process
or in Redis, so a restarted dispatcher carries on from the table.
"""

from __future__ import annotations

from typing import ClassVar

from django.db import models
from django.db.models import Q
from django.utils import timezone

from apps.tenancy.models import Organization

# A PostgreSQL sequence (created by the migration) numbering dispatches across the pool: the
# order runs got their slots in, where timestamps of one dispatch pass may be equal.
DISPATCH_SEQUENCE = "scheduling_dispatch_number"


class RunTicket(models.Model):
    class Priority(models.TextChoices):
        INTERACTIVE = "interactive", "Interactive"
        BATCH = "batch", "Batch"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="run_tickets")
    # The run's schema, copied from the organization when submitted: the only schema its
    # run is ever started in.
    schema_name = models.CharField(max_length=63)
    run_id = models.UUIDField(unique=True)
    priority = models.CharField(max_length=12, choices=Priority.choices, default=Priority.INTERACTIVE)
    # When it began waiting (kept when a waiting run is submitted again, so it keeps its place).
    enqueued_at = models.DateTimeField(default=timezone.now)
    # Set when it got a slot.
    started_at = models.DateTimeField(null=True, blank=True)
    dispatch_number = models.BigIntegerField(null=True, blank=True)
    # Set once apps.agents.tasks.run_start_dispatched returned for this slot; a started ticket
    # without it is handed off again by the beat task (the dispatcher may have died between).
    handed_off_at = models.DateTimeField(null=True, blank=True)
    # The place in line the run's watchers were last told (a state event with queue_position).
    announced_position = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering: ClassVar = ["enqueued_at", "id"]
        indexes: ClassVar = [
            models.Index(
                fields=["organization", "priority", "enqueued_at"],
                condition=Q(started_at__isnull=True),
                name="scheduling_ticket_waiting",
            ),
            models.Index(
                fields=["organization"],
                condition=Q(started_at__isnull=False),
                name="scheduling_ticket_running",
            ),
        ]

    def __str__(self) -> str:
        state = "running" if self.started_at else "waiting"
        return f"run {self.run_id} of {self.schema_name} ({self.priority}, {state})"

    @property
    def waiting(self) -> bool:
        return self.started_at is None


class OrganizationTurn(models.Model):
    """When the pool last gave one of the organization's runs a slot: round robin's memory,
    kept apart from the tickets, which go when their runs release them."""

    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, primary_key=True, related_name="pool_turn"
    )
    last_dispatch_number = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"turn of {self.organization_id}: {self.last_dispatch_number}"
