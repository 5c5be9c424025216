"""Workspaces (an organization's isolated development environments) and the
organization's secrets. Tenant schema: each organization has its own tables.

A workspace's sandbox lives on the runtime as tenant = the organization's schema
name, sandbox_id = `ws-<pk>` (see `Workspace.sandbox_id`)."""

from typing import Any, ClassVar

from django.db import models
from django.db.models import Q


class Workspace(models.Model):
    class State(models.TextChoices):
        # In our database only: its sandbox is made on the runtime when it first starts.
        PROVISIONING = "provisioning", "Provisioning"
        RUNNING = "running", "Running"
        STOPPED = "stopped", "Stopped"
        ARCHIVED = "archived", "Archived"
        DELETED = "deleted", "Deleted"

    name = models.CharField(max_length=64)
    repo_url = models.CharField(max_length=500, blank=True)
    template = models.CharField(max_length=64, default="base")
    cpus = models.FloatField(default=1.0)
    memory_mb = models.PositiveIntegerField(default=1024)
    disk_mb = models.PositiveIntegerField(default=2048)
    pids = models.PositiveIntegerField(default=256)
    idle_timeout_seconds = models.PositiveIntegerField(default=3600)
    # "host:port" entries the sandbox may reach; empty: no network at all.
    network_allow = models.JSONField(default=list, blank=True)
    # A JSON object of environment variables, encrypted (apps/workspaces/crypto.py).
    env_encrypted = models.TextField(blank=True, default="")
    state = models.CharField(max_length=16, choices=State.choices, default=State.PROVISIONING)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    archived_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)
    last_activity_at = models.DateTimeField(null=True, blank=True)
    # Users live in the public schema; a plain id keeps this table free of a cross-schema key.
    created_by_id = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering: ClassVar[list[str]] = ["-created_at", "-id"]
        constraints: ClassVar[list[models.BaseConstraint]] = [
            # Destroyed workspaces stay for the audit trail and free their name.
            models.UniqueConstraint(
                fields=["name"], condition=~Q(state="deleted"), name="workspace_name_unique_while_alive"
            ),
        ]
        indexes: ClassVar[list[models.Index]] = [models.Index(fields=["state"], name="workspace_state")]

    def __str__(self) -> str:
        return self.name

    @property
    def sandbox_id(self) -> str:
        return f"ws-{self.pk}"

    @property
    def is_running(self) -> bool:
        return self.state == self.State.RUNNING

    @property
    def is_writable(self) -> bool:
        return self.state in {self.State.PROVISIONING, self.State.RUNNING, self.State.STOPPED}

    def summary(self) -> dict[str, Any]:
        """What the audit log keeps of it (never the environment's values)."""
        return {
            "name": self.name,
            "state": self.state,
            "template": self.template,
            "cpus": self.cpus,
            "memory_mb": self.memory_mb,
            "disk_mb": self.disk_mb,
            "pids": self.pids,
            "network_allow": list(self.network_allow),
        }


class Secret(models.Model):
    """An organization-wide secret (a git token, say). Its value is encrypted and never
    shown back: people and the API see only its name."""

    name = models.CharField(max_length=64, unique=True)
    value_encrypted = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    created_by_id = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering: ClassVar[list[str]] = ["name"]

    def __str__(self) -> str:
        return self.name
