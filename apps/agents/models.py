"""Agents of one organization (tenant schema).

- AgentProfile: how an agent works (model or `auto`, prompt template version,
  tools allowed, budgets, confirmation mode). A run copies what it needs into
  `AgentRun.settings` when it is created, so editing a profile never changes a run
  in flight.
- AgentRun: one task on one workspace, its state and its totals.
- Event: the run's history, append-only (a database trigger refuses UPDATE and
  DELETE of single rows; the rows go only with their run). `seq` counts from 1 per
  run with no gap; `step_key` makes a step's writes idempotent, so a step that a
  second worker repeats after a crash writes nothing twice.
- OrganizationTool: a tool the organization adds to its agents (an HTTP endpoint or
  an MCP server, whose tools are discovered when a run connects).
- ToolStat: per-tool usage counts and error rates.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import ClassVar

from django.db import models
from django.db.models import Q


class AgentProfile(models.Model):
    name = models.CharField(max_length=100, unique=True)
    role = models.CharField(max_length=2000, blank=True, default="")
    # A catalog model name, or "auto" for the gateway's router to choose per step.
    model = models.CharField(max_length=200, default="auto")
    prompt_template = models.CharField(max_length=100, default="agent.system")
    # A pinned version of prompt_template; None: its current version (or the file default).
    prompt_version = models.PositiveIntegerField(null=True, blank=True)
    # Tool names allowed; empty: every built-in and organization tool.
    tools = models.JSONField(default=list, blank=True)
    max_steps = models.PositiveIntegerField(default=50)
    max_cost = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal("1"))
    max_seconds = models.PositiveIntegerField(default=1800)
    # Actions matching the risk policy wait for a member's approve/deny.
    confirmation = models.BooleanField(default=False)
    # Extra regular expressions of risky commands, beside the built-in ones.
    risk_patterns = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    created_by_id = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering: ClassVar = ["name"]

    def __str__(self) -> str:
        return self.name


class AgentRun(models.Model):
    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        PAUSED = "paused", "Paused"
        WAITING = "waiting_for_approval", "Waiting for approval"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    class Priority(models.TextChoices):
        INTERACTIVE = "interactive", "Interactive"
        BATCH = "batch", "Batch"

    # A member's request, taken up by the worker between steps.
    class Control(models.TextChoices):
        NONE = "", "None"
        PAUSE = "pause", "Pause"
        CANCEL = "cancel", "Cancel"

    FINISHED: ClassVar = (State.SUCCEEDED, State.FAILED, State.CANCELLED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    task = models.TextField()
    workspace = models.ForeignKey(
        "workspaces.Workspace", null=True, blank=True, on_delete=models.SET_NULL, related_name="agent_runs"
    )
    profile = models.ForeignKey(
        AgentProfile, null=True, blank=True, on_delete=models.SET_NULL, related_name="runs"
    )
    # What the run works with, copied from the profile at creation: model, prompt template and
    # version, tools, budgets, confirmation and risk patterns.
    settings = models.JSONField(default=dict)
    state = models.CharField(max_length=24, choices=State.choices, default=State.QUEUED)
    state_reason = models.CharField(max_length=1000, blank=True, default="")
    control = models.CharField(max_length=8, choices=Control.choices, blank=True, default="")
    priority = models.CharField(max_length=12, choices=Priority.choices, default=Priority.INTERACTIVE)
    # {"answer": str, "diff": str, "commit": str | None, ...}
    result = models.JSONField(default=dict, blank=True)
    steps = models.PositiveIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cached_tokens = models.BigIntegerField(default=0)
    cost = models.DecimalField(max_digits=14, decimal_places=8, default=Decimal("0"))
    # Seconds spent running (not queued, paused or waiting), for the wall-time budget.
    active_seconds = models.FloatField(default=0.0)
    last_seq = models.PositiveIntegerField(default=0)
    # The worker driving the run and when it last said so; a stale heartbeat on a running run
    # means the worker died, and the run is resumed elsewhere.
    worker = models.CharField(max_length=200, blank=True, default="")
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    created_by_id = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Multi-agent plans (later): the run that started this one.
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children"
    )

    class Meta:
        ordering: ClassVar = ["-created_at"]
        indexes: ClassVar = [
            models.Index(fields=["state", "created_at"]),
            models.Index(fields=["workspace", "created_at"]),
        ]

    def __str__(self) -> str:
        return f"run {self.id}"

    @property
    def finished(self) -> bool:
        return self.state in self.FINISHED


class Event(models.Model):
    class Kind(models.TextChoices):
        MESSAGE = "message", "Message"
        ACTION = "action", "Action"
        OBSERVATION = "observation", "Observation"
        STATE = "state", "State"
        ERROR = "error", "Error"

    run = models.ForeignKey(AgentRun, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveIntegerField()
    kind = models.CharField(max_length=12, choices=Kind.choices)
    step = models.PositiveIntegerField(default=0)
    payload = models.JSONField(default=dict)
    input_tokens = models.IntegerField(default=0)
    output_tokens = models.IntegerField(default=0)
    cost = models.DecimalField(max_digits=14, decimal_places=8, default=Decimal("0"))
    # "step:<n>:<part>" for writes a repeated step must not duplicate; "" for the rest.
    step_key = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering: ClassVar = ["run", "seq"]
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["run", "seq"], name="agents_event_run_seq"),
            models.UniqueConstraint(
                fields=["run", "step_key"], condition=~Q(step_key=""), name="agents_event_run_step_key"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.run_id}#{self.seq} {self.kind}"


class OrganizationTool(models.Model):
    class Kind(models.TextChoices):
        HTTP = "http", "HTTP endpoint"
        MCP = "mcp", "MCP server"

    # For HTTP: the tool's name; for MCP: a prefix, the server's tools becoming "<name>.<tool>".
    name = models.CharField(max_length=64, unique=True)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    description = models.CharField(max_length=2000, blank=True, default="")
    url = models.URLField(max_length=2000)
    # HTTP: the JSON Schema of the arguments (POSTed as the JSON body).
    parameters = models.JSONField(default=dict, blank=True)
    # Header values are secrets: encrypted (apps/workspaces/crypto.py), never shown back.
    headers_encrypted = models.TextField(blank=True, default="")
    timeout_seconds = models.PositiveIntegerField(default=30)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    created_by_id = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering: ClassVar = ["name"]

    def __str__(self) -> str:
        return self.name


class ToolStat(models.Model):
    tool = models.CharField(max_length=200, unique=True)
    calls = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    total_ms = models.BigIntegerField(default=0)
    last_error = models.CharField(max_length=1000, blank=True, default="")
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering: ClassVar = ["tool"]

    def __str__(self) -> str:
        return self.tool

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0
