"""`manage.py agent run` as a person types it: a real process against the test database,
the run driven by the real worker in a real sandbox with the scripted OpenAI fake. Its
output streams the events with a progress line; its exit status says how the run ended."""

import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal

import pytest
from django_tenants.utils import schema_context

from apps.agents.events import event_append
from apps.agents.models import AgentProfile, AgentRun
from apps.workspaces.models import Workspace
from tests.agents.cleanup import forget_experience
from tests.agents.engine import (  # noqa: F401 (fixtures)
    _distinct_sandbox_ids,
    agent_fake,
    agent_llm,
    bash,
    finish,
    llm,
    profile,
    remove_profile,
    sample_workspace,
    tool,
)
from tests.conftest import ROOT, World, _worker_env
from tests.fakes.llm_fake import Reply
from tests.fakes.openai_server import FakeOpenAI

UNITTEST = "cd /workspace/sample && python3 -m unittest 2>&1"


def agent(*arguments: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "agent", *arguments],
        cwd=ROOT,
        env=_worker_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def scripted(live_db: World) -> Iterator[AgentProfile]:
    found = profile(live_db, name="cli-scripted")
    yield found
    forget_experience(live_db, found)
    remove_profile(live_db, found)


def test_a_run_started_from_the_terminal_streams_its_events_and_exits_0_when_it_succeeds(
    live_db: World,
    llm: FakeOpenAI,  # noqa: F811
    sample_workspace: Workspace,  # noqa: F811
    scripted: AgentProfile,
) -> None:
    llm.script(
        bash(UNITTEST),
        tool(
            "str_replace_editor",
            command="str_replace",
            path="/workspace/sample/calc.py",
            old_str="    return a - b",
            new_str="    return a + b",
        ),
        bash(UNITTEST),
        finish("It adds now."),
    )
    done = agent(
        "run", "--org", "alpha", "--workspace", sample_workspace.name, "--profile", scripted.name,
        "Make the failing test in sample/ pass.",
    )  # fmt: skip

    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "/agents/runs/" in out.splitlines()[0]
    assert "task: Make the failing test in sample/ pass." in out
    assert f"[step 1] bash: $ {UNITTEST}" in out
    assert "output (exit 1):" in out
    assert "[step 2] str_replace_editor: str_replace /workspace/sample/calc.py" in out
    assert "+    return a + b" in out
    assert "[step 4] finish: It adds now." in out
    assert "state: succeeded" in out
    progress = [line for line in out.splitlines() if line.startswith("-- step ")]
    assert progress, out
    assert progress[-1].endswith("succeeded")
    assert " out tokens · $" in progress[-1]
    assert out.rstrip().splitlines()[-1].startswith("Run succeeded")
    # Every event once, in order: the step lines appear once each.
    assert [line.split("]")[0] for line in out.splitlines() if line.startswith("[step ")] == [
        "[step 1", "[step 2", "[step 3", "[step 4",
    ]  # fmt: skip


def test_a_run_that_fails_exits_1(
    live_db: World,
    llm: FakeOpenAI,  # noqa: F811
    sample_workspace: Workspace,  # noqa: F811
    scripted: AgentProfile,
) -> None:
    llm.script(Reply.error(400, "This model does not take tools today."))
    done = agent(
        "run", "--org", "alpha", "--workspace", sample_workspace.name, "--profile", scripted.name, "Try"
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "state: failed" in done.stdout
    assert done.stdout.rstrip().splitlines()[-1].startswith("Run failed")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--org", "nowhere", "--workspace", "x", "task"], "There is no organization 'nowhere'."),
        (
            ["--org", "alpha", "--workspace", "no-such-workspace", "task"],
            "There is no workspace 'no-such-workspace'",
        ),
        (
            ["--org", "alpha", "--workspace", "WS", "--profile", "nobody", "task"],
            "There is no agent profile 'nobody'",
        ),
        (
            ["--org", "alpha", "--workspace", "WS", "--user", "ben@beta.test", "task"],
            "is not a member of alpha",
        ),
        (["--org", "alpha", "--workspace", "WS", "   "], "Say what the agent should do."),
    ],
)
def test_command_line_mistakes_exit_2_with_a_message(
    live_db: World, stopped_workspace: Workspace, arguments: list[str], message: str
) -> None:
    arguments = [stopped_workspace.name if value == "WS" else value for value in arguments]
    done = agent("run", *arguments)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_stopped_workspace_exits_2_and_says_to_start_it(
    live_db: World, stopped_workspace: Workspace
) -> None:
    done = agent("run", "--org", "alpha", "--workspace", stopped_workspace.name, "Fix it")
    assert done.returncode == 2
    assert "start it before running an agent on it" in done.stderr


@pytest.fixture
def stopped_workspace(live_db: World) -> Iterator[Workspace]:
    with schema_context(live_db.alpha.schema_name):
        workspace = Workspace.objects.create(name="cli-stopped", state=Workspace.State.STOPPED)
    yield workspace
    with schema_context(live_db.alpha.schema_name):
        Workspace.objects.filter(pk=workspace.pk).delete()


@pytest.fixture
def finished_run(live_db: World) -> Iterator[AgentRun]:
    """A run that ended (rows only, as the loop leaves them), with a few events."""
    with schema_context(live_db.alpha.schema_name):
        run = AgentRun.objects.create(
            task="Say hello", state=AgentRun.State.FAILED, state_reason="Out of steps"
        )
        event_append(run=run, kind="message", payload={"role": "user", "text": "Say hello"})
        event_append(
            run=run,
            kind="action",
            step=1,
            payload={
                "tool": "bash",
                "arguments": {"command": "echo hello"},
                "call_id": "c1",
                "thought": "Greet",
            },
            input_tokens=120,
            output_tokens=8,
            cost=Decimal("0.0004"),
        )
        event_append(
            run=run,
            kind="observation",
            step=1,
            payload={
                "tool": "bash",
                "call_id": "c1",
                "output": "hello\n",
                "error": False,
                "data": {"exit_code": 0},
            },
        )
        event_append(run=run, kind="state", payload={"state": "failed", "reason": "Out of steps"})
        # The run's totals, as the loop adds each step's to them with its action.
        AgentRun.objects.filter(pk=run.pk).update(
            steps=1, input_tokens=120, output_tokens=8, cost=Decimal("0.0004")
        )
    yield run
    with schema_context(live_db.alpha.schema_name):
        AgentRun.objects.filter(pk=run.pk).delete()


def test_watching_a_run_prints_its_events_after_the_cursor_and_exits_by_how_it_ended(
    finished_run: AgentRun,
) -> None:
    done = agent("watch", "--org", "alpha", str(finished_run.pk), "--after", "1")
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "task: Say hello" not in lines
    assert "  thinking: Greet" in lines
    assert "[step 1] bash: $ echo hello" in lines
    assert "  output (exit 0):" in lines
    assert "    hello" in lines
    assert "state: failed (Out of steps)" in lines
    assert lines[-1] == "Run failed: Out of steps"
    unknown = agent("watch", "--org", "alpha", "00000000-0000-0000-0000-000000000000")
    assert unknown.returncode == 2
    assert "There is no run" in unknown.stderr


def test_on_a_terminal_the_progress_line_stays_at_the_bottom(finished_run: AgentRun) -> None:
    """Run on a pseudo-terminal: each redraw of the progress line starts by clearing the line
    it replaces, and the events are printed above it."""
    import os
    import pty

    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "manage.py", "agent", "watch", "--org", "alpha", str(finished_run.pk)],
        cwd=ROOT,
        env=_worker_env(),
        stdout=terminal,
        stderr=subprocess.DEVNULL,
    )
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the other side closed
            break
        if not chunk:
            break
        output += chunk
    assert process.wait(timeout=60) == 1
    os.close(controller)
    text = output.decode()
    assert "\r\x1b[Kstep 1 · 120 in / 8 out tokens · $0.000400 · failed" in text
    assert text.index("[step 1] bash: $ echo hello") < text.index("\r\x1b[Kstep 1")
    assert text.rstrip().endswith("Run failed: Out of steps")
