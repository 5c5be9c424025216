"""Fixtures for the built-in tools' tests: a running workspace of Alpha on the real runtime
(bwrap sandbox), a run on it, and the tool call context a worker would build."""

import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import pytest
from django_tenants.utils import schema_context

from apps.agents.models import AgentRun
from apps.agents.tools.base import ToolCallContext, ToolOutcome, ToolSpec
from apps.agents.tools.builtin import builtin_tools
from apps.tenancy.audit import Actor
from apps.workspaces.models import Workspace
from apps.workspaces.runtime import runtime_client
from runtime.client import RuntimeServiceError
from tests.conftest import World
from tests.workspaces.conftest import make_workspace

__all__ = ["Agent", "agent_fixture", "running_workspace"]


class Agent:
    """Calls the built-in tools as the loop does, for one run."""

    def __init__(self, world: World, workspace: Workspace, run: AgentRun) -> None:
        self.world = world
        self.workspace = workspace
        self.run = run
        self.tools: dict[str, ToolSpec] = {spec.name: spec for spec in builtin_tools()}

    def context(self, run: AgentRun | None = None, seconds_left: float = 600.0) -> ToolCallContext:
        return ToolCallContext(
            run=run or self.run,
            organization=self.world.alpha,
            workspace=self.workspace,
            actor=Actor(user=self.world.alice),
            step=1,
            deadline=time.monotonic() + seconds_left,
        )

    def call(self, tool: str, run: AgentRun | None = None, **arguments: Any) -> ToolOutcome:
        return self.tools[tool].handler(self.context(run), arguments)

    def call_raw(self, tool: str, arguments: Any) -> ToolOutcome:
        return self.tools[tool].handler(self.context(), arguments)

    def new_run(self) -> AgentRun:
        return AgentRun.objects.create(task="another task", workspace=self.workspace)


@contextmanager
def running_workspace(world: World, **kwargs: Any) -> Iterator[Workspace]:
    """A running workspace of Alpha's (python template) made by the real service, its sandbox
    destroyed on the runtime afterwards."""
    kwargs.setdefault("template", "python")
    workspace = make_workspace(world, **kwargs)
    try:
        yield workspace
    finally:
        with schema_context(world.alpha.schema_name), suppress(RuntimeServiceError):
            runtime_client().destroy_sandbox(world.alpha.schema_name, workspace.sandbox_id)


@pytest.fixture(name="agent")
def agent_fixture(world: World, runtime_server: Any, _distinct_sandbox_ids: None) -> Iterator[Agent]:
    """A run of Alpha's on a fresh running workspace; the test runs in Alpha's schema.
    (`_distinct_sandbox_ids`, tests/agents/conftest.py: this session's sandboxes never share
    a name with another test session's on the same runtime host.)"""
    with running_workspace(world, name="agent-tools") as workspace, schema_context(world.alpha.schema_name):
        run = AgentRun.objects.create(task="fix the tests", workspace=workspace)
        yield Agent(world, workspace, run)
