"""A run's sessions live in its sandbox, not in the worker: a second worker process (here a
fresh Python process on the same database and runtime, as after a crash) takes the run over
and finds the shell's directory and variables, the interpreter's names and the editor's undo
history where the first left them."""

import subprocess
import sys
from typing import Any

import pytest
from django_tenants.utils import schema_context

from apps.agents.models import AgentRun
from apps.workspaces.models import Workspace
from tests.agents.tool_sandbox import Agent, running_workspace
from tests.conftest import ROOT, World, _worker_env

FIRST_WORKER = """
import sys, time
import django
django.setup()
from django_tenants.utils import schema_context
from apps.agents.models import AgentRun
from apps.agents.tools.base import ToolCallContext
from apps.agents.tools.builtin import builtin_tools
from apps.tenancy.audit import Actor
from apps.tenancy.models import Organization

schema, run_id = sys.argv[1], sys.argv[2]
with schema_context(schema):
    run = AgentRun.objects.select_related("workspace").get(pk=run_id)
    context = ToolCallContext(
        run=run, organization=Organization.objects.get(schema_name=schema), workspace=run.workspace,
        actor=Actor.system(), step=1, deadline=time.monotonic() + 120,
    )
    tools = {spec.name: spec for spec in builtin_tools()}
    calls = [
        ("bash", {"command": "mkdir -p src && cd src && export STAGE=first-worker"}),
        ("python", {"code": "answer = 41"}),
        ("str_replace_editor", {"command": "create", "path": "notes.txt", "file_text": "v1\\n"}),
        ("str_replace_editor", {"command": "str_replace", "path": "notes.txt",
                                "old_str": "v1", "new_str": "v2"}),
    ]
    for name, arguments in calls:
        outcome = tools[name].handler(context, arguments)
        assert not outcome.error, outcome.output
print("first worker done")
"""


@pytest.mark.usefixtures("_distinct_sandbox_ids")
def test_another_worker_process_continues_the_runs_sessions(live_db: World, runtime_server: Any) -> None:
    world = live_db
    with running_workspace(world, name="sessions") as workspace:
        try:
            with schema_context(world.alpha.schema_name):
                run = AgentRun.objects.create(task="take over", workspace=workspace)
            first = subprocess.run(
                [sys.executable, "-c", FIRST_WORKER, world.alpha.schema_name, str(run.pk)],
                cwd=ROOT,
                env=_worker_env(),
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert first.returncode == 0, first.stderr[-3000:]
            assert first.stdout.strip().endswith("first worker done")

            with schema_context(world.alpha.schema_name):
                agent = Agent(world, workspace, run)
                shell = agent.call("bash", command='pwd; echo "$STAGE"')
                assert shell.output.splitlines()[:2] == ["/workspace/src", "first-worker"]
                python = agent.call("python", code="answer + 1")
                assert python.output == "42"
                assert python.data["fresh_interpreter"] is False
                undone = agent.call("str_replace_editor", command="undo_edit", path="notes.txt")
                assert not undone.error, undone.output
                assert agent.call("bash", command="cat /workspace/notes.txt").output.startswith("v1\n")
        finally:
            with schema_context(world.alpha.schema_name):
                AgentRun.objects.filter(workspace_id=workspace.pk).delete()
                Workspace.objects.filter(pk=workspace.pk).delete()
